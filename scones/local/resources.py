"""What the embedded default is made of: the workspace, its object store, its SQLite model
registry and the account id of the ARNs it makes.

`scones.backend.LocalBackend` hands these out to the layers above; the twin's own parts (the
endpoint server in its process, the pipeline runner) build them here, so nothing in
scones.local reaches back up through the backend.
"""
from __future__ import annotations

from scones.config import Config, account_of
from scones.registry import LocalRegistry
from scones.storage import LocalObjectStore
from scones.workspace import Workspace

# The account id of every ARN the embedded default makes (moto's default account too).
LOCAL_ACCOUNT_ID = "123456789012"


class LocalResources:
    def __init__(self, config: Config):
        self.config = config
        self.workspace = Workspace(config.local.workspace)

    @property
    def account_id(self) -> str:
        return account_of(self.config.aws.role_arn) or LOCAL_ACCOUNT_ID

    def object_store(self) -> LocalObjectStore:
        return LocalObjectStore(self.workspace.object_store_dir)

    def registry(self) -> LocalRegistry:
        return LocalRegistry(self.config, self.workspace, self.object_store(), self.account_id)
