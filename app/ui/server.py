"""The local Studio: a Flask app (served by waitress) over the project's library functions.

Every page reads through the backend of the config it was started with (`--env local|aws`);
every action is a POST that calls the function the CLI calls:

    approve / reject       workflow.stages.approve_and_deploy / reject_and_report
    promote, roll back     workflow.stages.promote / deploy_model_package
    staging test           workflow.stage_test.run_stage_test
    pipeline run / retry   `scones pipeline run|retry` (pipelines.executors), parameters first
                           checked by pipelines.parameters.check_parameters
    pipeline stop          pipelines.executors ... .stop
    Try it                 workflow.run.run_workflow (the inference workflow itself)
"""
from __future__ import annotations

import importlib
import logging
import tempfile
import threading
import time
from pathlib import Path

from flask import (Flask, Response, abort, flash, get_flashed_messages, jsonify, redirect,
                   render_template, request, send_file, url_for)
from markupsafe import Markup
from werkzeug.exceptions import HTTPException
from werkzeug.utils import secure_filename

from app.ui import studio
from app.ui.jobs import CliRuns, Jobs
from app.ui.security import CSRF_FIELD, Guard
from lambdas.events import MAX_INVOKE_ENDPOINT_BODY_BYTES
from pipelines.executors import pipeline_executor
from pipelines.parameters import check_parameters
from scones.backend import backend_for
from scones.config import STAGES, Config
from scones.errors import SconesError
from scones.processes import exit_if_stop_hangs

log = logging.getLogger("scones.ui")

# Uploads are held to the endpoint's own limits: 6 MB a request body (SageMaker's), and a
# decoded image of at most 40 megapixels (the model's inference.py refuses bigger ones).
MAX_IMAGE_BYTES = MAX_INVOKE_ENDPOINT_BODY_BYTES
MAX_IMAGE_PIXELS = 40_000_000
MAX_FILES = 20
POLL_MS = 2000


class UploadRefused(SconesError):
    """An uploaded file over the endpoint's limits, or not an image at all."""


def describe_error(exc: BaseException, config: Config | None = None) -> str:
    """One line for the page, as `run_guarded` says it at the CLI: a SconesError's own
    message, an AWS failure translated; anything else only by its type (the traceback goes
    to the server's log, never to the page)."""
    from scones.aws_errors import translate

    if isinstance(exc, SconesError):
        return str(exc)
    aws = config.aws if config is not None else None
    translated = translate(exc, region=getattr(aws, "region", None),
                           role_arn=getattr(aws, "role_arn", None),
                           bucket=getattr(aws, "bucket", None))
    if translated is not None:
        return str(translated)
    log.error("unexpected error in the Studio", exc_info=exc)
    return (f"unexpected {type(exc).__name__} - a bug in scones; the traceback is in the "
            "terminal running `scones ui`")


def create_app(config: Config, guard: Guard, config_args: list[str]) -> Flask:
    app = Flask(__name__)
    app.secret_key = guard.csrf_token + "-flash"
    app.config.update(MAX_CONTENT_LENGTH=MAX_FILES * MAX_IMAGE_BYTES + 1024 * 1024,
                      SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict",
                      SESSION_COOKIE_NAME="scones_ui_flash")
    guard.install(app)
    backend = backend_for(config)
    workspace = backend.workspace
    cli = CliRuns(config_args, workspace.root / "ui" / "runs")
    jobs = Jobs(lambda exc: describe_error(exc, config))
    definition: dict = {}
    definition_lock = threading.Lock()

    def pipeline_definition() -> dict:
        with definition_lock:  # built once (the SDK takes seconds), as `pipeline definition`
            if not definition:
                from pipelines.pipeline import pipeline_definition as build

                definition.update(build(config))
            return definition

    # pandas is imported here, once, before the definition's thread imports the SDK (which
    # imports pandas too): plotly looks pandas up lazily, and a page drawn while that thread
    # is half-way through importing it would find a partly initialised module.
    _quietly(lambda: importlib.import_module("pandas"))
    threading.Thread(target=lambda: _quietly(pipeline_definition), daemon=True).start()

    def executor():
        return pipeline_executor(backend)

    @app.context_processor
    def common():
        return {"csrf_field": Markup(f'<input type="hidden" name="{CSRF_FIELD}" '
                                     f'value="{guard.csrf_token}">'),
                "csrf_token": guard.csrf_token, "env": config.env, "poll_ms": POLL_MS,
                "messages": get_flashed_messages(with_categories=True),
                "workspace": str(workspace.root),
                "fmt": _fmt}

    def back(endpoint: str, **values):
        return redirect(url_for(endpoint, **values), code=303)

    def act(call, success, endpoint: str, **values):
        """Run one action, flash its outcome (or its error, as the CLI says it), go back."""
        try:
            message = success(call())
            for line in ([message] if isinstance(message, str) else message or []):
                flash(line, "error" if line.startswith("warning") else "ok")
        except Exception as exc:
            flash(describe_error(exc, config), "error")
        return back(endpoint, **values)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return Response(f"{exc.code} {exc.name}: {exc.description}\n", status=exc.code,
                        mimetype="text/plain")

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        return Response(describe_error(exc, config) + "\n", status=500, mimetype="text/plain")

    # ------------------------------------------------------------------ static files
    @app.get("/vendor/plotly.min.js")
    def plotly_js():
        """plotly.js from the plotly package itself: no CDN, works with no internet."""
        import plotly

        path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
        response = send_file(path, mimetype="text/javascript", max_age=3600)
        response.headers["Cache-Control"] = "private, max-age=3600"
        return response

    @app.get("/")
    def index():
        return back("pipelines")

    @app.get("/artifacts/<path:relative>")
    def artifact(relative: str):
        """A plot the workspace holds (a monitoring run's PNGs): only a .png file inside the
        workspace; `..`, absolute paths and links out are refused, never read."""
        try:
            if not relative.lower().endswith(".png"):
                raise studio.ArtifactRefused("only the workspace's .png plots are served")
            path = studio.workspace_file(workspace.root, relative)
        except SconesError as exc:
            abort(404, str(exc))
        return send_file(path, mimetype="image/png")

    # ------------------------------------------------------------------ pipelines
    def _live_context(selected: str | None):
        executions = executor().executions(limit=15)
        chosen = next((e for e in executions if e["ExecutionId"] == selected),
                      executions[0] if executions else None)
        nodes, edges = studio.pipeline_graph(pipeline_definition())
        statuses = {s["Name"]: s for s in (chosen or {}).get("Steps", [])}
        return {"executions": executions, "chosen": chosen,
                "graph": studio.graph_svg_layout(nodes, edges, statuses),
                "running": any(e["Status"] in ("Executing", "Stopping") for e in executions),
                "cli_runs": cli.recent()}

    @app.get("/pipelines")
    def pipelines():
        selected = request.args.get("execution")
        return render_template("pipelines.html", page="pipelines", selected=selected,
                               fields=studio.parameter_fields(pipeline_definition()),
                               pipeline_name=config.pipeline.name,
                               **_live_context(selected))

    @app.get("/pipelines/live")
    def pipelines_live():
        selected = request.args.get("execution")
        return render_template("pipelines_live.html", selected=selected,
                               **_live_context(selected))

    @app.post("/pipelines/run")
    def pipelines_run():
        declared = {f["name"] for f in studio.parameter_fields(pipeline_definition())}
        parameters = {name: request.form[name].strip() for name in declared
                      if request.form.get(name, "").strip() != ""}

        def start():
            check_parameters(config, parameters)  # the --param range rules, before anything
            args = ["pipeline", "run", "--json"]
            for name, value in parameters.items():
                args += ["--param", f"{name}={value}"]
            return cli.start("pipeline run", args)

        return act(start, lambda run: f"pipeline run started (process {run.process.pid}); "
                   "its steps appear below as they run", "pipelines")

    @app.post("/pipelines/executions/<execution_id>/stop")
    def pipelines_stop(execution_id: str):
        return act(lambda: executor().stop(execution_id),
                   lambda stopped: (f"execution {execution_id}: stop requested" if stopped
                                    else f"warning: execution {execution_id} is not running "
                                         "here: nothing to stop"),
                   "pipelines", execution=execution_id)

    @app.post("/pipelines/executions/<execution_id>/retry")
    def pipelines_retry(execution_id: str):
        return act(lambda: cli.start("pipeline retry",
                                     ["pipeline", "retry", execution_id, "--json"]),
                   lambda run: f"retry of {execution_id} started (process {run.process.pid})",
                   "pipelines", execution=execution_id)

    @app.get("/pipelines/executions/<execution_id>/steps/<step>/log")
    def step_log(execution_id: str, step: str):
        execution = next((e for e in executor().executions(limit=200)
                          if e["ExecutionId"] == execution_id), None)
        if execution is None:
            abort(404, "no such execution")
        entry = next((s for s in execution.get("Steps", []) if s["Name"] == step), None)
        if entry is None or not entry.get("LogPath"):
            abort(404, "no log kept for this step here (on AWS: the job's CloudWatch logs)")
        try:
            path = studio.workspace_file(workspace.root,
                                         workspace.relative(entry["LogPath"]))
        except SconesError as exc:
            abort(404, str(exc))
        with path.open("rb") as handle:  # the last 256 KB: logs of long trainings are long
            handle.seek(max(0, path.stat().st_size - 256 * 1024))
            text = handle.read().decode("utf-8", "replace")
        return Response(text, mimetype="text/plain")

    # ------------------------------------------------------------------ registry
    @app.get("/registry")
    def registry():
        return render_template("registry.html", page="registry",
                               rows=studio.registry_rows(backend))

    @app.get("/registry/<int:version>")
    def version_page(version: int):
        try:
            details = studio.version_details(backend, version)
        except SconesError as exc:
            abort(404, str(exc))
        return render_template("version.html", page="registry", plots=studio.PLOTS,
                               **details)

    @app.get("/registry/<int:version>/plot/<name>.png")
    def version_plot(version: int, name: str):
        if name not in studio.PLOTS:
            abort(404, "no such plot")
        try:
            package = backend.registry().describe(version)
        except SconesError as exc:
            abort(404, str(exc))
        data = studio.version_plot(backend, package, name)
        if data is None:
            abort(404, "this version has no such plot")
        return Response(data, mimetype="image/png")

    @app.get("/registry/compare")
    def compare():
        try:
            left = studio.version_details(backend, request.args.get("a", ""))
            right = studio.version_details(backend, request.args.get("b", ""))
        except SconesError as exc:
            abort(404, str(exc))
        return render_template("compare.html", page="registry", left=left, right=right,
                               plots=studio.PLOTS)

    @app.post("/registry/<int:version>/approve")
    def approve(version: int):
        from workflow.stages import approve_and_deploy

        def said(outcome):
            package, changed, deployment = outcome
            if not changed:
                return f"version {version} is already Approved; nothing changed"
            lines = [f"version {version}: Approved"]
            if deployment is None:
                lines.append("the EventBridge rule deploys it to staging")
            elif deployment.get("Action") == "skipped":
                lines.append(f"warning: not deployed: {deployment['Reason']}")
            else:
                lines.append(f"staging endpoint {deployment['EndpointName']}: "
                             f"{deployment.get('Action', 'deployed')} with version {version}")
            return lines

        return act(lambda: approve_and_deploy(
            config, version, request.form.get("description") or None,
            deploy_older=request.form.get("deploy") == "on"), said, "version_page",
            version=version)

    @app.post("/registry/<int:version>/reject")
    def reject(version: int):
        from workflow.stages import reject_and_report

        description = (request.form.get("description") or "").strip()
        if not description:
            flash("a rejection needs a description (why it is rejected)", "error")
            return back("version_page", version=version)
        return act(lambda: reject_and_report(config, version, description,
                                             undeploy=request.form.get("undeploy") == "on"),
                   lambda outcome: [f"version {version}: "
                                    + ("Rejected" if outcome[1] else "already Rejected")]
                   + list(outcome[2]), "version_page", version=version)

    # ------------------------------------------------------------------ endpoints
    @app.get("/endpoints")
    def endpoints():
        rows = studio.endpoint_rows(config, backend)
        approved = [r for r in studio.registry_rows(backend) if r["Status"] == "Approved"]
        test_jobs = [j for j in jobs.jobs.values() if j.what == "staging test"][-1:]
        return render_template("endpoints.html", page="endpoints", rows=rows,
                               approved=approved, test_jobs=test_jobs)

    @app.post("/endpoints/test")
    def endpoint_test():
        from workflow.stage_test import run_stage_test

        job = jobs.start("staging test", lambda: run_stage_test(config, "staging"))
        flash(f"staging test started (job {job.number}); this page updates when it ends", "ok")
        return back("endpoints")

    @app.post("/endpoints/promote")
    def endpoint_promote():
        from workflow.stages import promote

        return act(lambda: promote(config),
                   lambda r: f"prod endpoint {r['EndpointName']}: {r['Action']}, serving "
                             f"version {r['ModelPackageVersion']}", "endpoints")

    @app.post("/endpoints/deploy")
    def endpoint_deploy():
        """Roll a stage back (or forward) to an Approved version: `endpoint deploy`."""
        from workflow.stages import deploy_model_package

        stage = request.form.get("stage", "")
        if stage not in STAGES:
            abort(400, "unknown stage")
        return act(lambda: deploy_model_package(config, request.form.get("version", ""),
                                                stage=stage),
                   lambda r: f"{stage} endpoint {r['EndpointName']}: {r['Action']}, serving "
                             f"version {r['ModelPackageVersion']}", "endpoints")

    @app.get("/jobs/<int:number>")
    def job_state(number: int):
        job = jobs.get(number)
        if job is None:
            abort(404, "no such job")
        return jsonify({"Number": job.number, "What": job.what, "Status": job.status,
                        "Error": job.error})

    # ------------------------------------------------------------------ monitoring
    @app.get("/monitoring")
    def monitoring():
        runs = studio.monitoring_runs(config)
        notes = []
        try:
            points, bands = studio.drift_points(config)
        except Exception as exc:
            points, bands = [], {}
            notes.append(describe_error(exc, config))
        figures = studio.drift_figures(points, bands) + studio.run_figures(runs)
        return render_template("monitoring.html", page="monitoring", runs=runs[::-1][:20],
                               figures=figures, notes=notes, records=len(points),
                               retraining=studio.retraining_record(config))

    # ------------------------------------------------------------------ try it
    @app.get("/try")
    def try_page():
        number = request.args.get("job", type=int)
        job = jobs.get(number) if number else None
        return render_template("try.html", page="try", job=job, threshold=_threshold(),
                               max_mb=MAX_IMAGE_BYTES // (1024 * 1024),
                               max_mp=MAX_IMAGE_PIXELS // 1_000_000)

    def _threshold():
        from workflow.stages import with_model_threshold

        try:
            return with_model_threshold(config, backend).workflow.confidence_threshold
        except Exception:
            return config.workflow.confidence_threshold

    @app.get("/try/<int:number>/results")
    def try_results(number: int):
        job = jobs.get(number)
        if job is None:
            abort(404, "no such job")
        return render_template("try_results.html", job=job, threshold=_threshold())

    @app.post("/try")
    def try_upload():
        from workflow.run import ImageSource, run_workflow

        files = [f for f in request.files.getlist("images") if f and f.filename]
        if not files:
            flash("choose one or more images first", "error")
            return back("try_page")
        if len(files) > MAX_FILES:
            flash(f"at most {MAX_FILES} images at a time", "error")
            return back("try_page")
        folder = Path(tempfile.mkdtemp(prefix="scones-ui-try-"))
        sources, refused = [], []
        for n, upload in enumerate(files):
            name = secure_filename(upload.filename) or f"image-{n}"
            data = upload.read(MAX_IMAGE_BYTES + 1)
            problem = _upload_problem(data)
            if problem:
                refused.append({"Image": name, "Error": UploadRefused.__name__,
                                "Cause": problem})
                continue
            path = folder / f"{n:02d}-{name}"
            path.write_bytes(data)
            sources.append(ImageSource(label=name, path=path))

        def classify():
            try:
                results = [r.to_dict() for r in run_workflow(
                    config, sources, progress=False, keep_endpoint_s=600.0)] if sources else []
            finally:
                for path in folder.iterdir():
                    path.unlink(missing_ok=True)
                folder.rmdir()
            return refused + results

        job = jobs.start("try", classify)
        return back("try_page", job=job.number)

    return app


def _upload_problem(data: bytes) -> str | None:
    """Why an upload is refused before the workflow sees it, None when it may go on: over
    6 MB, or a header declaring more than 40 MP (read without decoding the pixels). Whether
    it is an image the model can read is the workflow's to say (its own named error)."""
    if len(data) > MAX_IMAGE_BYTES:
        return (f"larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MB, the endpoint's limit "
                "(SageMaker's invocation payload)")
    if not data:
        return "the file is empty"
    from PIL import Image

    try:
        import io

        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception:
        return None  # not an image PIL knows: the workflow names that error itself
    if width * height > MAX_IMAGE_PIXELS:
        return (f"{width}x{height} pixels is more than {MAX_IMAGE_PIXELS // 1_000_000} "
                "megapixels, the endpoint's limit")
    return None


def _fmt(value, digits: int = 3) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _quietly(call) -> None:
    try:
        call()
    except Exception:  # shown when a page asks for it
        pass


def serve(config: Config, host: str, port: int, config_args: list[str], token: str,
          ready=None) -> None:
    """Serve until interrupted (waitress), then return. `ready(url)` is called once it
    listens. Only for a process of its own: from its stop on, the process has
    STOP_DEADLINE_S to end."""
    from waitress.server import create_server

    guard = Guard(token)
    app = create_app(config, guard, config_args)
    server = create_server(app, host=host, port=port, threads=8, ident="scones-ui",
                           clear_untrusted_proxy_headers=True)
    actual_port = server.effective_port
    guard.hosts = Guard.hosts_for(host, actual_port)
    shown = f"[{host}]" if ":" in host else host
    if ready is not None:
        ready(f"http://{shown}:{actual_port}/?token={token}")
    try:
        # Until Ctrl-C or SIGTERM: waitress catches the interrupt itself, stops its request
        # threads (5 s at most) and returns.
        server.run()
    finally:
        exit_if_stop_hangs()  # a stop ends the process whatever close() does
        server.close()
        time.sleep(0)
