"""What `run-pipeline` and `get-pipeline-definition` share: the SageMaker project template's
flags (--module-name, --kwargs, ...) and turning them into a Pipeline."""
from __future__ import annotations

import argparse
import importlib
import json
from typing import Callable

from app.cli.common import configure_logging, run_guarded
from scones.errors import SconesError


def template_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-n", "--module-name", default="pipelines.pipeline",
                        help="module whose get_pipeline(**kwargs) builds the pipeline "
                             "(default: pipelines.pipeline)")
    parser.add_argument("-kwargs", "--kwargs", default=None,
                        help="JSON object of get_pipeline's keyword arguments, e.g. "
                             '\'{"region": "eu-west-1", "role": "arn:...", '
                             '"default_bucket": "my-bucket"}\'')
    parser.add_argument("-tags", "--tags", default=None,
                        help='JSON list of tags for the pipeline and every job it starts, e.g. '
                             '\'[{"Key": "sagemaker:project-name", "Value": "bikes"}]\'')
    parser.add_argument("--env", choices=("local", "aws"), default="aws",
                        help="configuration the kwargs overlay (default: aws)")
    return parser


def parse_json_arg(flag: str, text: str | None, default):
    if text is None:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SconesError(f"{flag} is not valid JSON ({exc.msg} at column {exc.colno}): "
                          f"{text!r}") from None


def pipeline_from_args(args):
    """Import --module-name; our config for --env plus --kwargs and --tags."""
    kwargs = parse_json_arg("--kwargs", args.kwargs, {})
    tags = parse_json_arg("--tags", getattr(args, "tags", None), None)
    if not isinstance(kwargs, dict):
        raise SconesError(f"--kwargs must be a JSON object, got {type(kwargs).__name__}")
    try:
        module = importlib.import_module(args.module_name)
    except ModuleNotFoundError as exc:
        raise SconesError(f"--module-name {args.module_name}: {exc}") from None
    from pipelines.pipeline import config_from_template_kwargs

    config = config_from_template_kwargs(env=args.env, tags=tags, **kwargs)
    return module, config


def run_template_cli(body: Callable[[argparse.Namespace], int],
                     parser: argparse.ArgumentParser, argv=None) -> int:
    configure_logging()
    args = parser.parse_args(argv)
    # The same one-line errors as `scones` (AWS, OS, SIGTERM, SconesError), never a traceback.
    return run_guarded(lambda: int(body(args) or 0))
