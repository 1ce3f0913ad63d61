"""The local Studio (`scones ui`): pipelines, registry, endpoints, monitoring and "Try it" in a
browser, on the embedded default or an AWS account, through the same library calls as the
CLI. server.py: the Flask app and its waitress server; security.py: token, cookie, CSRF,
Host check; studio.py: what the pages show; jobs.py: long work and its progress."""
