"""What the SageMaker Project stack needs uploaded, built in one folder (`scones infra
package`): the workflow Lambdas' zips, the project's code as the S3 source of the model
build, the template, and a CloudFormation parameter file pointing the stack at them.

    out_dir/lambdas/<function key>.zip   -> s3://<bucket>/lambdas/<digest>/<key>.zip
    out_dir/source.zip                   -> s3://<bucket>/<SourceObjectKey>   (S3 source)
    out_dir/sagemaker-project.json         the template
    out_dir/parameters.json                [{"ParameterKey", "ParameterValue"}, ...] for
                                           `aws cloudformation create-stack/update-stack
                                           --parameters file://parameters.json`
    out_dir/uploads.json                   {"s3://bucket/key": "local path"}

The Lambda key prefix holds a digest of the zips: CloudFormation updates a function only
when its S3 key changes, so new code gets a new key and unchanged code keeps its key.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from lambdas.build import LambdaBuildError, build_lambda_zips
from scones.config import Config

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # the source checkout this runs from
from scones.errors import SconesError
from infra.project_template import TEMPLATE_PATH, project_template, template_json

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class PackagingError(SconesError):
    """The upload bundle cannot be built (bad Lambda, no bucket, not a git work tree)."""


@dataclass(frozen=True)
class Package:
    out_dir: Path
    bucket: str
    parameters: dict[str, str]
    uploads: dict[str, Path] = field(default_factory=dict)  # s3:// URL -> local file


def workflow_function_keys(config: Config) -> list[str]:
    """The function keys the template's Lambdas reference (<prefix><key>.zip)."""
    template = project_template(config)
    keys = []
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::Lambda::Function":
            key = resource["Properties"]["Code"]["S3Key"]["Fn::Sub"]
            keys.append(key.removeprefix("${LambdaCodeKeyPrefix}").removesuffix(".zip"))
    return sorted(keys)


def _digest(paths: list[Path]) -> str:
    sha = hashlib.sha256()
    for path in sorted(paths):
        sha.update(path.name.encode() + b"\0" + path.read_bytes())
    return sha.hexdigest()[:16]


def source_zip(out_path: Path, root: Path = PROJECT_ROOT) -> Path:
    """The project's tracked files (git ls-files) as a deterministic zip: what the S3
    source action hands the model build. Untracked files (.venv, .scones, data) stay out."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True,
                                check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise PackagingError(f"{root} is not a git work tree (git ls-files failed: {exc}); "
                             "the source zip holds the tracked files only") from None
    names = sorted(n for n in listed.decode().split("\0") if n and (root / n).is_file())
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w") as archive:
        for name in names:
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = ((root / name).stat().st_mode & 0o777 | 0o100000) << 16
            info.create_system = 3
            archive.writestr(info, (root / name).read_bytes())
    tmp.replace(out_path)
    return out_path


def package(config: Config, out_dir: Path | str, bucket: str | None = None,
            source_object_key: str = "source/scones-mlops.zip",
            with_source: bool = True) -> Package:
    """Build everything the stack references into out_dir and write the parameter file.

    bucket: where the zips go (the stack's ArtifactBucket once it exists, or any bucket the
    deploying account can read); default config.aws.bucket."""
    bucket = bucket or config.aws.bucket
    if not bucket:
        raise PackagingError("no bucket to upload to: pass one (the stack's "
                             "ArtifactBucketName output) or set aws.bucket")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise PackagingError(f"{out_dir}: exists and is not a folder")
    try:
        zips = build_lambda_zips(out_dir / "lambdas", keys=workflow_function_keys(config))
    except LambdaBuildError as exc:
        raise PackagingError(str(exc)) from None
    prefix = f"lambdas/{_digest(list(zips.values()))}/"
    uploads = {f"s3://{bucket}/{prefix}{key}.zip": path for key, path in zips.items()}
    parameters = {"LambdaCodeBucket": bucket, "LambdaCodeKeyPrefix": prefix}
    if with_source:
        uploads[f"s3://{bucket}/{source_object_key}"] = source_zip(out_dir / "source.zip")
        parameters["SourceObjectKey"] = source_object_key
    (out_dir / TEMPLATE_PATH.name).write_text(template_json(config))
    (out_dir / "parameters.json").write_text(json.dumps(
        [{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        indent=2) + "\n")
    (out_dir / "uploads.json").write_text(json.dumps(
        {url: str(path) for url, path in uploads.items()}, indent=2) + "\n")
    return Package(out_dir=out_dir, bucket=bucket, parameters=parameters, uploads=uploads)


def upload(result: Package, s3_client) -> list[str]:
    """Put every file of the package at its s3:// URL (a boto3 S3 client); the URLs."""
    done = []
    for url, path in result.uploads.items():
        bucket, _, key = url.removeprefix("s3://").partition("/")
        s3_client.upload_file(str(path), bucket, key)
        done.append(url)
    return done
