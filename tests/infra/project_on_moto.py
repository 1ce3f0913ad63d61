"""The project stack on moto, for the rehearsal's steps 3 and 7 (tests/infra/test_rehearsal.py).

    - moto's CloudFormation creates the stack's deployable part (test_rehearsal.deployable_part)
      from the packaged template and parameters.json, with the Lambdas' packaged zips;
    - moto's Step Functions interpreter runs its state machines, the Lambdas in-process from
      those zips (scones.local.stepfunctions_engine.local_aws: moto's Lambda needs Docker);
    - the same moto is served over HTTP on 127.0.0.1 (ThreadedMotoServer, in this process so
      it shares those backends and patches), for the buildspecs' commands run as
      subprocesses with AWS_ENDPOINT_URL pointing at it.

Stubs, for what moto lacks:
  - InvokeEndpoint: moto serves no model (and its sagemaker-runtime cannot take a binary
    body). A stand-in on 127.0.0.1 answers SageMaker's runtime API and serving contract
    (one image -> its probabilities; the batch request -> {"predictions": [...]}) from a
    table of image bytes -> class index that the test fills, for endpoints moto's SageMaker
    has InService (others are refused as SageMaker refuses them); the Lambdas reach it as
    they reach the local endpoint (local_aws's endpoint_url);
  - ListPipelineExecutionSteps (run-pipeline follows the execution with it): moto has
    none; its pipeline executions succeed at once without running a step, so the answer
    is no steps;
  - moto's CloudFormation creates the state machines in the Step Functions backend its
    interpreter does not read (moto.stepfunctions.responses.get_backend), and without
    their `Definition` (it reads only DefinitionString): each is created again through the
    API, with moto's name, role and type and the template's Definition as CloudFormation
    resolves it (iam_proof.Resolved);
  - the stack's resources moto's CloudFormation cannot create (test_rehearsal.STATIC_ONLY)
    are made by hand where a step needs them: the model package group (with the
    template's name), and what the deploy state machine would have made (staging's model,
    config and endpoint, named as it names them).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from unittest import mock

import boto3

from iam_proof import Resolved

REGION = "us-east-1"


class ProjectOnMoto:
    def __init__(self, bundle: Path, stack_name: str):
        self.bundle = bundle
        self.stack_name = stack_name
        self.template = json.loads((bundle / "sagemaker-project.json").read_text())
        self.parameters = json.loads((bundle / "parameters.json").read_text())
        given = {p["ParameterKey"]: p["ParameterValue"] for p in self.parameters}
        self.resolved = Resolved(self.template, given)   # names as CloudFormation gives them
        self.answers: dict[str, int] = {}   # sha256 of an image -> the class the model says
        self.classes = 2
        self._stack = contextlib.ExitStack()

    # ------------------------------------------------------------------ life cycle
    def __enter__(self) -> "ProjectOnMoto":
        from moto.core.responses import ActionResult
        from moto.sagemaker.responses import SageMakerResponse
        from moto.server import ThreadedMotoServer

        from scones.local.stepfunctions_engine import local_aws
        from test_rehearsal import deployable_part

        try:
            self.aws = self._stack.enter_context(local_aws(REGION,
                                                           endpoint_url=self._serve_model()))
            self._stack.enter_context(mock.patch.object(
                SageMakerResponse, "list_pipeline_execution_steps",
                lambda response: ActionResult({"PipelineExecutionSteps": []}), create=True))
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            self._stack.callback(server.stop)
            host, port = server.get_host_and_port()
            self.endpoint_url = f"http://{host}:{port}"

            s3 = boto3.client("s3", region_name=REGION)
            uploads = json.loads((self.bundle / "uploads.json").read_text())
            for url, path in uploads.items():
                bucket, _, key = url.removeprefix("s3://").partition("/")
                if bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
                    s3.create_bucket(Bucket=bucket)
                s3.upload_file(path, bucket, key)
            cloudformation = boto3.client("cloudformation", region_name=REGION)
            cloudformation.create_stack(
                StackName=self.stack_name, TemplateBody=json.dumps(deployable_part(self.template)),
                Parameters=self.parameters, Capabilities=["CAPABILITY_IAM"])
            stack = cloudformation.describe_stacks(StackName=self.stack_name)["Stacks"][0]
            assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
            self.outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
            self._state_machines_into_the_interpreter()
            # STATIC_ONLY, made as the stack names it
            group = self.resolved.properties("ModelPackageGroup")
            boto3.client("sagemaker", region_name=REGION).create_model_package_group(
                ModelPackageGroupName=group["ModelPackageGroupName"])
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def _state_machines_into_the_interpreter(self) -> None:
        from moto.stepfunctions.models import stepfunctions_backends

        created = stepfunctions_backends["123456789012"][REGION].state_machines
        assert created, "moto's CloudFormation created no state machine"
        definitions = {p["StateMachineName"]: p["Definition"] for p in
                       self.resolved.of_type("AWS::StepFunctions::StateMachine").values()}
        stepfunctions = boto3.client("stepfunctions", region_name=REGION)
        for machine in created:
            stepfunctions.create_state_machine(
                name=machine.name, definition=json.dumps(definitions[machine.name]),
                roleArn=machine.roleArn, type=machine.type)
        self.state_machines = {m.name: m.arn for m in created}

    # ------------------------------------------------------------------ names
    @property
    def bucket(self) -> str:
        return self.outputs["ArtifactBucketName"]

    def output(self, name: str) -> str:
        """An output of the full template (moto's part lacks some), resolved."""
        return self.resolved.value(self.template["Outputs"][name]["Value"])

    def codebuild_environment(self, project: str) -> dict[str, str]:
        """The environment the template gives that CodeBuild project, plus CodeBuild's own
        variables, pointed at this moto."""
        variables = self.resolved.properties(project)["Environment"]["EnvironmentVariables"]
        return {**{v["Name"]: str(v["Value"]) for v in variables},
                "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
                "AWS_ENDPOINT_URL": self.endpoint_url,
                "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "CODEBUILD_BUILD_SUCCEEDING": "1"}

    # ------------------------------------------------------------------ what others make
    def register_version(self, **extra) -> str:
        """An approved version in the stack's model package group, as the pipeline's
        RegisterModel step leaves it; its ARN."""
        pipeline = self.output("PipelineName")
        return boto3.client("sagemaker", region_name=REGION).create_model_package(
            ModelPackageGroupName=self.output("ModelPackageGroupName"),
            ModelApprovalStatus="Approved", **extra,
            InferenceSpecification={
                "Containers": [{"Image": "763104351884.dkr.ecr.us-east-1.amazonaws.com/x:1",
                                "ModelDataUrl": f"s3://{self.bucket}/{pipeline}/model.tar.gz"}],
                "SupportedContentTypes": ["image/png"],
                "SupportedResponseMIMETypes": ["application/json"]})["ModelPackageArn"]

    def serve(self, stage: str, package_arn: str) -> dict:
        """The stage's model, endpoint config and endpoint serving the version, named as the
        deploy state machine names them (its Settings state, evaluated); those settings."""
        from iam_proof import evaluate

        sagemaker = boto3.client("sagemaker", region_name=REGION)
        version = sagemaker.describe_model_package(
            ModelPackageName=package_arn)["ModelPackageVersion"]
        states = self.resolved.properties("DeployStateMachine")["Definition"]["States"]
        settings = evaluate(states["Settings"]["Parameters"],
                            {"package": {"Arn": package_arn, "Version": version}}, {})[stage]
        sagemaker.create_model(ModelName=settings["ResourceName"],
                               ExecutionRoleArn=self.resolved.attribute(
                                   "SageMakerExecutionRole", "Arn"),
                               PrimaryContainer={"ModelPackageName": package_arn})
        sagemaker.create_endpoint_config(
            EndpointConfigName=settings["ResourceName"], ProductionVariants=[{
                "VariantName": "AllTraffic", "ModelName": settings["ResourceName"],
                "InstanceType": settings["InstanceType"], "InitialInstanceCount": 1}])
        sagemaker.create_endpoint(EndpointName=settings["EndpointName"],
                                  EndpointConfigName=settings["ResourceName"])
        return settings

    # ------------------------------------------------------------------ the model stand-in
    def _serve_model(self) -> str:
        """SageMaker's runtime API (POST /endpoints/<name>/invocations) on 127.0.0.1, the
        stand-in model behind it; the URL local_aws hands the Lambdas as their
        sagemaker-runtime endpoint (moto's own cannot take a binary body)."""
        import base64
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from moto.sagemaker.models import sagemaker_backends

        project = self

        class Runtime(BaseHTTPRequestHandler):
            def do_POST(self):
                parts = self.path.strip("/").split("/")
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                endpoints = sagemaker_backends["123456789012"][REGION].endpoints
                name = parts[1] if len(parts) == 3 and parts[2] == "invocations" else None
                if name not in endpoints or endpoints[name].endpoint_status != "InService":
                    self._answer(400, {"__type": "ValidationError",
                                       "message": f"Endpoint {name} not found."})
                elif "batch" in self.headers.get("Content-Type", ""):
                    images = [base64.b64decode(i) for i in json.loads(body)["images"]]
                    self._answer(200, {"predictions": [project.probabilities(i)
                                                       for i in images]})
                else:
                    self._answer(200, project.probabilities(body))

            def _answer(self, status: int, document) -> None:
                data = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Runtime)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._stack.callback(server.server_close)
        self._stack.callback(server.shutdown)
        return f"http://127.0.0.1:{server.server_address[1]}"

    def probabilities(self, image: bytes) -> list[float]:
        label = self.answers[hashlib.sha256(image).hexdigest()]
        return [0.96 if n == label else 0.04 / (self.classes - 1) for n in range(self.classes)]

    def knows(self, image: bytes, label: int) -> None:
        self.answers[hashlib.sha256(image).hexdigest()] = label
