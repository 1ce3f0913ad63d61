"""What the SageMaker Project stack needs uploaded, built in one folder (`scones infra
package`): the workflow Lambdas' zips, the project's code as the S3 source of the model
build, the template, and a CloudFormation parameter file pointing the stack at them.

    out_dir/lambdas/<function key>.zip   -> s3://<bucket>/lambdas/<digest>/<key>.zip
    out_dir/source.zip                   -> s3://<bucket>/<SourceObjectKey>   (S3 source)
    out_dir/sagemaker-project.json       -> s3://<bucket>/templates/<digest>/sagemaker-project.json
                                           the template: larger than the 51,200 bytes
                                           --template-body takes, so it goes by
                                           --template-url (template_url in package.json)
    out_dir/parameters.json                [{"ParameterKey", "ParameterValue"}, ...] naming
                                           every parameter without a default, for
                                           `aws cloudformation create-stack --template-url
                                           ... --parameters file://parameters.json`
    out_dir/uploads.json                   {"s3://bucket/key": "local path"}

The Lambda key prefix holds a digest of the zips: CloudFormation updates a function only
when its S3 key changes, so new code gets a new key and unchanged code keeps its key.
"""
from __future__ import annotations

import hashlib
import json
import re
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


# CloudFormation's limits (CreateStack): a template in the request body, or by URL from S3
TEMPLATE_BODY_LIMIT = 51_200
TEMPLATE_URL_LIMIT = 1_000_000


@dataclass(frozen=True)
class Package:
    out_dir: Path
    bucket: str
    parameters: dict[str, str]
    uploads: dict[str, Path] = field(default_factory=dict)  # s3:// URL -> local file
    template_url: str = ""  # https:// URL of the uploaded template (--template-url)


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
            with_source: bool = True, project_name: str = "", project_id: str = ""
            ) -> Package:
    """Build everything the stack references into out_dir and write the parameter file.

    bucket: where the zips and the template go (any bucket the deploying account can read);
    default config.aws.bucket. project_name, project_id: the SageMakerProjectName and
    SageMakerProjectId parameters (no defaults: Studio fills them in; a stack created by
    hand names them here)."""
    bucket = bucket or config.aws.bucket
    if not bucket:
        raise PackagingError("no bucket to upload to: pass one (the stack's "
                             "ArtifactBucketName output) or set aws.bucket")
    template = project_template(config)
    given = {"SageMakerProjectName": project_name, "SageMakerProjectId": project_id}
    missing = [name for name, p in template["Parameters"].items()
               if "Default" not in p and not given.get(name)]
    if missing:
        raise PackagingError(f"the template's parameters {', '.join(missing)} have no "
                             "default: give them (--project-name, --project-id)")
    for name, value in given.items():
        pattern = template["Parameters"][name].get("AllowedPattern")
        if pattern and not re.fullmatch(pattern, value):
            raise PackagingError(f"{name} {value!r} does not match {pattern} "
                                 f"({template['Parameters'][name].get('ConstraintDescription', '')})")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise PackagingError(f"{out_dir}: exists and is not a folder")
    try:
        zips = build_lambda_zips(out_dir / "lambdas", keys=workflow_function_keys(config))
    except LambdaBuildError as exc:
        raise PackagingError(str(exc)) from None
    prefix = f"lambdas/{_digest(list(zips.values()))}/"
    uploads = {f"s3://{bucket}/{prefix}{key}.zip": path for key, path in zips.items()}
    parameters = {**given, "LambdaCodeBucket": bucket, "LambdaCodeKeyPrefix": prefix}
    if with_source:
        uploads[f"s3://{bucket}/{source_object_key}"] = source_zip(out_dir / "source.zip")
        parameters["SourceObjectKey"] = source_object_key
    template_path = out_dir / TEMPLATE_PATH.name
    template_path.write_text(template_json(config))
    size = template_path.stat().st_size
    if size > TEMPLATE_URL_LIMIT:
        raise PackagingError(f"the template is {size} bytes; CloudFormation takes at most "
                             f"{TEMPLATE_URL_LIMIT} from S3")
    template_key = f"templates/{_digest([template_path])}/{TEMPLATE_PATH.name}"
    uploads[f"s3://{bucket}/{template_key}"] = template_path
    template_url = f"https://{bucket}.s3.{config.aws.region}.amazonaws.com/{template_key}"
    (out_dir / "parameters.json").write_text(json.dumps(
        [{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        indent=2) + "\n")
    (out_dir / "uploads.json").write_text(json.dumps(
        {url: str(path) for url, path in uploads.items()}, indent=2) + "\n")
    (out_dir / "package.json").write_text(json.dumps(
        {"template_url": template_url, "template_bytes": size}, indent=2) + "\n")
    return Package(out_dir=out_dir, bucket=bucket, parameters=parameters, uploads=uploads,
                   template_url=template_url)


def upload(result: Package, s3_client) -> list[str]:
    """Put every file of the package at its s3:// URL (a boto3 S3 client); the URLs."""
    done = []
    for url, path in result.uploads.items():
        bucket, _, key = url.removeprefix("s3://").partition("/")
        s3_client.upload_file(str(path), bucket, key)
        done.append(url)
    return done
