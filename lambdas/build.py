"""Package each Lambda as its own deterministic zip (a build tool: never shipped itself).

A function is a module in lambdas/ that defines a top-level `lambda_handler`; its key is
the module's name (e.g. "classify_image"). Its zip holds `lambdas/__init__.py`, the module
and the lambdas/ modules it imports (transitively, found with ast), under `lambdas/`, so
the handler is `lambdas.<key>.lambda_handler`. Anything else imported must be the
standard library or boto3/botocore (the Lambda runtime has those): a Lambda importing
numpy or the project would break only on AWS, so the build refuses it here.

Zip entries have fixed timestamps and permissions and a fixed order, so the same sources
give the same bytes and the same CodeSha256: re-deploying unchanged code is a no-op.
"""
from __future__ import annotations

import ast
import base64
import hashlib
import sys
import zipfile
from pathlib import Path

PACKAGE = "lambdas"
PACKAGE_DIR = Path(__file__).resolve().parent
RUNTIME_PROVIDED = {"boto3", "botocore"}  # in the python3.11 Lambda runtime
NOT_SHIPPED = {"build"}                    # this module
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)          # the earliest date a zip entry can hold


class LambdaBuildError(ValueError):
    """A Lambda module cannot be packaged (bad import, syntax error, unknown function)."""


def _parse(module: str, package_dir: Path) -> ast.Module:
    path = package_dir / f"{module.rpartition('.')[2]}.py"
    try:
        return ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as exc:
        raise LambdaBuildError(f"{path}:{exc.lineno}: cannot parse: {exc.msg}") from None


def handler_modules(package_dir: Path = PACKAGE_DIR) -> dict[str, str]:
    """{function key: module name} for every module defining a top-level lambda_handler."""
    found = {}
    for path in sorted(package_dir.glob("*.py")):
        key = path.stem
        if key.startswith("_") or key in NOT_SHIPPED:
            continue
        tree = _parse(f"{PACKAGE}.{key}", package_dir)
        if any(isinstance(node, ast.FunctionDef) and node.name == "lambda_handler"
               for node in tree.body):
            found[key] = f"{PACKAGE}.{key}"
    return found


def _imported_modules(module: str, package_dir: Path) -> set[str]:
    """Absolute names of what `module` imports (at any depth in its code)."""
    names = set()
    for node in ast.walk(_parse(module, package_dir)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against our flat package
                base = PACKAGE if node.level == 1 else None
                if base is None:
                    raise LambdaBuildError(f"{module}: relative import beyond the "
                                           f"{PACKAGE} package")
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module
            names.add(base)
            if base == PACKAGE:  # `from lambdas import events`: events is a module
                names.update(f"{PACKAGE}.{alias.name}" for alias in node.names)
    return names


def module_closure(module: str, package_dir: Path = PACKAGE_DIR) -> list[str]:
    """The lambdas/ modules `module` needs, itself included, sorted; refuses imports
    the Lambda runtime cannot satisfy."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        if not (package_dir / f"{current.rpartition('.')[2]}.py").is_file():
            raise LambdaBuildError(f"{current}: no such module in {package_dir}")
        seen.add(current)
        for name in _imported_modules(current, package_dir):
            top = name.partition(".")[0]
            if top == PACKAGE:
                if name != PACKAGE:
                    todo.append(".".join(name.split(".")[:2]))
            elif top not in sys.stdlib_module_names and top not in RUNTIME_PROVIDED \
                    and top != "__future__":
                raise LambdaBuildError(
                    f"{current} imports {name!r}: a Lambda may use only the standard library, "
                    f"boto3/botocore and modules of {PACKAGE}/")
    return sorted(seen)


def _zip_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o100644 << 16  # a regular file, rw-r--r--, whoever builds it
    info.create_system = 3                # unix, so the attributes above are honoured
    return info


def build_zip(key: str, out_path: Path, package_dir: Path = PACKAGE_DIR) -> Path:
    modules = module_closure(f"{PACKAGE}.{key}", package_dir)
    files = ["__init__.py"] + [f"{m.rpartition('.')[2]}.py" for m in modules]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w") as archive:
        for filename in sorted(set(files)):
            source = (package_dir / filename).read_bytes()
            archive.writestr(_zip_entry(f"{PACKAGE}/{filename}"), source, compresslevel=9)
    tmp.replace(out_path)  # never leave a half-written zip under the final name
    return out_path


def build_lambda_zips(out_dir: Path | str, keys=None,
                      package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """{function key: zip path}, one zip per function (all of them, or `keys`)."""
    available = handler_modules(package_dir)
    wanted = sorted(available) if keys is None else list(keys)
    unknown = [k for k in wanted if k not in available]
    if unknown:
        raise LambdaBuildError(f"no Lambda function {', '.join(map(repr, unknown))} in "
                               f"{package_dir} (functions: {', '.join(sorted(available))})")
    out_dir = Path(out_dir)
    return {key: build_zip(key, out_dir / f"{key}.zip", package_dir) for key in wanted}


def code_sha256(zip_path: Path | str) -> str:
    """The zip's hash as Lambda reports it in CodeSha256 (base64 of the SHA-256 digest)."""
    digest = hashlib.sha256(Path(zip_path).read_bytes()).digest()
    return base64.b64encode(digest).decode("ascii")
