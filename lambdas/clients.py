"""boto3 clients, created once per Lambda container (per service and endpoint URL)."""
from __future__ import annotations

import threading

import boto3
from botocore.config import Config

from lambdas import settings

# Step Functions retries throttling with backoff (see the ASL); botocore retrying as well
# would multiply the attempts, so keep its own retries short.
_CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 2},
                        connect_timeout=5, read_timeout=70)
_clients: dict[tuple, object] = {}
_lock = threading.Lock()


def aws_client(service: str):
    """A cached boto3 client for the function's region; a new one when the region or
    AWS_ENDPOINT_URL_<SERVICE> has changed."""
    env_name = service.upper().replace("-", "_")
    region = settings.aws_region()
    key = (service, region, settings.endpoint_url_override(env_name))
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = boto3.client(service, region_name=region,
                                                  config=_CLIENT_CONFIG)
        return client
