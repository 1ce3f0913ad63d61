"""`python -m scones.local.endpoint`: the child side of EndpointProcess."""
import sys

from scones.local.endpoint.process import serve_child

sys.exit(serve_child())
