"""`python -m workflow.endpoint`: the child side of EndpointProcess."""
import sys

from workflow.endpoint.process import serve_child

sys.exit(serve_child())
