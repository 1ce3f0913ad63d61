"""`workflow run --images` keeps memory flat in the number of images (issue 18 item 9):
each execution is released from moto's engine, with the input staged for it, once its
result is read, and images are staged only as their executions start."""
from __future__ import annotations

import os

import pytest
from PIL import Image

from helpers import deploy_locally
from scones.config import load_config
from workflow.run import Workflow, images_from_options

pytestmark = pytest.mark.slow  # the workflow deployed into moto with a running endpoint

CONCURRENCY = 3


def moto_holds(region: str, bucket: str) -> tuple[int, int]:
    """(executions over every state machine, objects in `bucket`) in moto's backends."""
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.stepfunctions.responses import get_backend

    account = os.environ.get("MOTO_ACCOUNT_ID", DEFAULT_ACCOUNT_ID)
    executions = sum(len(m.executions) for m in get_backend(account, region).state_machines)
    buckets = s3_backends[account]["aws"].buckets
    objects = len(buckets[bucket].keys) if bucket in buckets else 0
    return executions, objects


def moto_keeps_elsewhere() -> int:
    """Finished interpreter threads (each holds its execution's Environment) plus every
    model instance moto tracks (a state machine copy per execution, S3 keys, ACLs...)."""
    from moto.core.model_instances import model_data
    from moto.stepfunctions.parser.utils import TMP_THREADS

    tracked = sum(len(model.instances_tracked) for models in model_data.values()
                  for model in models.values())
    return sum(not thread.is_alive() for thread in TMP_THREADS) + tracked


def test_finished_executions_and_their_inputs_are_released_as_results_come(
        tmp_path, small_model_tar):
    config = load_config("local", {"local.workspace": str(tmp_path / "ws")})
    deploy_locally(config, small_model_tar)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(24):
        Image.new("RGB", (32, 32), (i * 10, 255 - i * 10, 128)).save(folder / f"{i:03d}.png")
    images = images_from_options(config, images=str(folder))

    held, elsewhere = [], []
    with Workflow(config) as workflow:
        results = []
        for result in workflow.iter_run(images, concurrency=CONCURRENCY, progress=False):
            results.append(result)
            held.append(moto_holds(config.aws.region, config.aws.bucket))
            elsewhere.append(moto_keeps_elsewhere())

    assert [r.image for r in results] == [i.label for i in images]  # input order, all
    assert all(r.status in ("SUCCEEDED", "FAILED") and r.inferences for r in results)
    # at most the running ones (and those read but not yet yielded) stay in the engine,
    # however many images went before
    assert max(executions for executions, _ in held) <= CONCURRENCY + 1, held
    assert max(objects for _, objects in held) <= CONCURRENCY + 1, held
    assert held[-1] == (0, 0), held
    # nor anywhere else in moto: what it keeps does not grow with the images
    assert elsewhere[-1] - elsewhere[CONCURRENCY] <= 2 * CONCURRENCY, elsewhere
