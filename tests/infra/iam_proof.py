"""IAM proven mechanically: what each role's code calls, checked against the role's policies.

A template is resolved here as CloudFormation would resolve it for one set of parameter
values (Ref, Fn::Sub, Fn::GetAtt, Fn::If and the conditions, with the physical names and
ARNs CloudFormation gives each resource type). Then, per role, the AWS calls its code makes
are derived:

  - state machines: every Task's integration (aws-sdk, optimised, .sync, .waitForTaskToken),
    its resource computed from the Task's Parameters on a sample execution input, plus
    Distributed Map's children, ItemReader and ResultWriter;
  - what AWS documents as needed besides (Application Auto Scaling on a SageMaker variant,
    the events rule of a .sync CodeBuild task, SageMaker's AddTags when creating with tags);
  - Lambdas and CLI commands: recorded while the real code runs under moto (`CallRecorder`).

Each (role, action, resource) is evaluated with moto's IAMPolicy against the role's own
inline policies (conditions are not evaluated: moto cannot, and the proof is about
action and resource). Action names are checked against IAM's list with parliament.
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable

from moto.iam.access_control import IAMPolicy, PermissionResult

ACCOUNT = "123456789012"
REGION = "us-east-1"
PARTITION = "aws"
NO_VALUE = object()

# moto/botocore service names whose IAM prefix differs, and operations whose IAM action does
_SERVICE_PREFIX = {"monitoring": "cloudwatch", "runtime.sagemaker": "sagemaker",
                   "sagemaker-runtime": "sagemaker", "applicationautoscaling":
                   "application-autoscaling", "stepfunctions": "states", "sfn": "states"}
_ACTION_ALIAS = {
    "lambda:Invoke": ["lambda:InvokeFunction"],
    "s3:HeadObject": ["s3:GetObject"],
    "s3:HeadBucket": ["s3:ListBucket"],
    "s3:ListObjectsV2": ["s3:ListBucket"],
    "s3:ListObjects": ["s3:ListBucket"],
    "s3:CreateMultipartUpload": ["s3:PutObject"],
    "s3:UploadPart": ["s3:PutObject"],
    "s3:CompleteMultipartUpload": ["s3:PutObject"],
    "s3:CopyObject": ["s3:PutObject"],  # plus GetObject on the source, added by the recorder
    "s3:DeleteObjects": ["s3:DeleteObject"],
    "s3:GetBucketLocation": ["s3:GetBucketLocation"],
    "s3:ListObjectVersions": ["s3:ListBucketVersions"],
    "sts:GetCallerIdentity": [],  # needs no permission
}
# SageMaker parameter -> the ARN resource type it names (SageMaker ARNs are lower case)
_SAGEMAKER_NAMES = {"EndpointName": "endpoint", "EndpointConfigName": "endpoint-config",
                    "ModelName": "model", "PipelineName": "pipeline",
                    "ModelPackageGroupName": "model-package-group",
                    "ProcessingJobName": "processing-job", "TrainingJobName": "training-job"}


@dataclass(frozen=True)
class Call:
    """One permission a role's code needs: `action` on `resource`, and why."""
    role: str
    action: str
    resource: str
    why: str


# ----------------------------------------------------------------------------- the template

def _arn(service: str, resource: str, region: str = REGION, account: str = ACCOUNT) -> str:
    return f"arn:{PARTITION}:{service}:{region}:{account}:{resource}"


def sagemaker_arn(kind: str, name: str) -> str:
    return _arn("sagemaker", f"{kind}/{name.lower()}")


class Resolved:
    """A template resolved for given parameter values."""

    def __init__(self, template: dict, parameters: dict[str, str]):
        self.template = template
        self.parameters = {name: str(p.get("Default", "")) for name, p in
                           template.get("Parameters", {}).items()}
        self.parameters.update(parameters)
        missing = [n for n, v in self.parameters.items()
                   if n not in parameters and "Default" not in template["Parameters"][n]]
        if missing:
            raise ValueError(f"parameters without a default need a value: {missing}")
        self.parameters.update({"AWS::Region": REGION, "AWS::AccountId": ACCOUNT,
                                "AWS::Partition": PARTITION, "AWS::StackName": "stack",
                                "AWS::URLSuffix": "amazonaws.com"})
        self.conditions: dict[str, bool] = {}
        for name in template.get("Conditions", {}):
            self._condition(name)
        self.resources = {k: r for k, r in template["Resources"].items()
                          if self.conditions.get(r.get("Condition"), True)
                          if "Condition" not in r or self.conditions[r["Condition"]]}
        self._names: dict[str, str] = {}
        self._properties: dict[str, dict] = {}
        for logical in self.resources:
            self.properties(logical)

    # conditions
    def _condition(self, name: str) -> bool:
        if name not in self.conditions:
            self.conditions[name] = bool(self._condition_value(
                self.template["Conditions"][name]))
        return self.conditions[name]

    def _condition_value(self, node):
        if isinstance(node, dict):
            (fn, args), = node.items()
            if fn == "Fn::Equals":
                a, b = (self._condition_value(x) for x in args)
                return str(a) == str(b)
            if fn == "Fn::Not":
                return not self._condition_value(args[0])
            if fn == "Fn::And":
                return all(self._condition_value(x) for x in args)
            if fn == "Fn::Or":
                return any(self._condition_value(x) for x in args)
            if fn == "Condition":
                return self._condition(args)
            return self.value(node)
        return node

    # physical names and attributes, as CloudFormation gives them per resource type
    def ref(self, logical: str) -> str:
        if logical in self.parameters:
            return self.parameters[logical]
        resource = self.resources[logical]
        kind, props = resource["Type"], self.properties(logical)
        name_prop = {"AWS::S3::Bucket": "BucketName", "AWS::IAM::Role": "RoleName",
                     "AWS::Lambda::Function": "FunctionName",
                     "AWS::StepFunctions::StateMachine": "StateMachineName",
                     "AWS::CodeBuild::Project": "Name", "AWS::CodePipeline::Pipeline": "Name",
                     "AWS::Logs::LogGroup": "LogGroupName", "AWS::Events::Rule": "Name",
                     "AWS::CloudWatch::Alarm": "AlarmName", "AWS::SNS::Topic": "TopicName",
                     "AWS::SQS::Queue": "QueueName", "AWS::Scheduler::Schedule": "Name",
                     "AWS::SageMaker::ModelPackageGroup": "ModelPackageGroupName"}.get(kind)
        name = str(props.get(name_prop) or f"stack-{logical}-GENERATED")
        if kind == "AWS::StepFunctions::StateMachine":
            return _arn("states", f"stateMachine:{name}")
        if kind == "AWS::SNS::Topic":
            return _arn("sns", name)
        if kind == "AWS::SQS::Queue":
            return f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{name}"
        return name

    def attribute(self, logical: str, attribute: str) -> str:
        kind = self.resources[logical]["Type"]
        name = self.ref(logical)
        if attribute == "QueueName":
            return name.rsplit("/", 1)[-1]
        if attribute != "Arn":
            raise KeyError(f"{logical}.{attribute}")
        return {
            "AWS::IAM::Role": lambda: f"arn:{PARTITION}:iam::{ACCOUNT}:role/{name}",
            "AWS::S3::Bucket": lambda: f"arn:{PARTITION}:s3:::{name}",
            "AWS::Lambda::Function": lambda: _arn("lambda", f"function:{name}"),
            "AWS::StepFunctions::StateMachine": lambda: name,
            "AWS::CodeBuild::Project": lambda: _arn("codebuild", f"project/{name}"),
            "AWS::Logs::LogGroup": lambda: _arn("logs", f"log-group:{name}:*"),
            "AWS::Events::Rule": lambda: _arn("events", f"rule/{name}"),
            "AWS::CloudWatch::Alarm": lambda: _arn("cloudwatch", f"alarm:{name}"),
            "AWS::SQS::Queue": lambda: _arn("sqs", name.rsplit("/", 1)[-1]),
            "AWS::Scheduler::Schedule": lambda: _arn("scheduler", f"schedule/default/{name}"),
            "AWS::SageMaker::ModelPackageGroup": lambda: sagemaker_arn(
                "model-package-group", name),
        }[kind]()

    def properties(self, logical: str) -> dict:
        if logical not in self._properties:
            self._properties[logical] = {}  # cycles resolve to the name-less default
            self._properties[logical] = self.value(
                self.resources[logical].get("Properties", {}))
        return self._properties[logical]

    def value(self, node):
        """The node with every intrinsic function resolved; NO_VALUE items dropped."""
        if isinstance(node, list):
            return [v for v in (self.value(x) for x in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (fn, args), = node.items()
            if fn == "Ref":
                return NO_VALUE if args == "AWS::NoValue" else self.ref(args)
            if fn == "Fn::GetAtt":
                logical, attribute = args if isinstance(args, list) else args.split(".", 1)
                return self.attribute(logical, attribute)
            if fn == "Fn::If":
                condition, then, otherwise = args
                return self.value(then if self.conditions[condition] else otherwise)
            if fn == "Fn::Sub":
                text, variables = (args, {}) if isinstance(args, str) else args
                variables = {k: self.value(v) for k, v in variables.items()}

                def substitute(match):
                    token = match.group(1)
                    if token.startswith("!"):
                        return "${" + token[1:] + "}"
                    if token in variables:
                        return str(variables[token])
                    if "." in token and token.split(".")[0] in self.resources:
                        return self.attribute(*token.split(".", 1))
                    return str(self.ref(token))
                return re.sub(r"\$\{([^}]+)\}", substitute, text)
            if fn == "Fn::FindInMap":
                mapping, first, second = (self.value(a) for a in args)
                return self.template["Mappings"][mapping][first][second]
            if fn == "Fn::Join":
                separator, items = args
                return separator.join(str(x) for x in self.value(items))
            if fn == "Fn::Select":
                index, items = args
                return self.value(items)[int(index)]
            if fn == "Fn::Split":
                separator, text = args
                return str(self.value(text)).split(separator)
        return {k: v for k, v in ((k, self.value(v)) for k, v in node.items())
                if v is not NO_VALUE}

    def of_type(self, kind: str) -> dict[str, dict]:
        return {k: self.properties(k) for k, r in self.resources.items() if r["Type"] == kind}

    def role_of(self, arn: str) -> str:
        """The logical id of the template's role with this ARN."""
        for logical in self.of_type("AWS::IAM::Role"):
            if self.attribute(logical, "Arn") == arn:
                return logical
        raise KeyError(f"{arn} is not a role of this template")

    def policies(self, role: str) -> list[dict]:
        """The role's inline policies and the AWS::IAM::RolePolicy attached to it."""
        documents = [p["PolicyDocument"] for p in self.properties(role).get("Policies", [])]
        for properties in self.of_type("AWS::IAM::RolePolicy").values():
            if properties["RoleName"] == self.ref(role):
                documents.append(properties["PolicyDocument"])
        if self.properties(role).get("ManagedPolicyArns"):
            raise AssertionError(f"{role}: managed policies cannot be proven here")
        return documents


# ----------------------------------------------------------------------------- evaluation

def _without_conditions(document: dict) -> str:
    document = copy.deepcopy(document)
    statements = document["Statement"]
    for statement in statements if isinstance(statements, list) else [statements]:
        statement.pop("Condition", None)
    return json.dumps(document)


def permitted(documents: list[dict], action: str, resource: str) -> bool:
    results = [IAMPolicy(_without_conditions(d)).is_action_permitted(action, resource)
               for d in documents]
    return PermissionResult.PERMITTED in results and PermissionResult.DENIED not in results


def refused(resolved: Resolved, calls: Iterable[Call]) -> list[Call]:
    """The calls the role's policies do not allow."""
    return [c for c in calls if not permitted(resolved.policies(c.role), c.action, c.resource)]


def unknown_actions(resolved: Resolved) -> list[str]:
    """parliament's findings on action names (UNKNOWN_ACTION, UNKNOWN_PREFIX) in every
    policy of the template, and any "*" action."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from parliament import analyze_policy_string
    problems = []
    for role in resolved.of_type("AWS::IAM::Role"):
        for document in resolved.policies(role):
            for statement in document["Statement"]:
                actions = statement["Action"]
                for action in actions if isinstance(actions, list) else [actions]:
                    if action == "*" or action.endswith(":*"):
                        problems.append(f"{role}: {action}")
            for finding in analyze_policy_string(_without_conditions(document)).findings:
                if finding.issue in ("UNKNOWN_ACTION", "UNKNOWN_PREFIX", "UNKNOWN_OPERATOR",
                                     "MALFORMED"):
                    problems.append(f"{role}: {finding.issue} {finding.detail}")
    return problems


# ----------------------------------------------------------------------------- state machines

def _path(document, path: str, context: dict):
    root, _, rest = path.partition(".") if not path.startswith("$$") else ("$$", "", path[3:])
    node = context if path.startswith("$$") else document
    if path in ("$", "$$"):
        return node
    for part in (path[3:] if path.startswith("$$.") else path[2:]).split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _intrinsic(expression: str, document, context):
    if expression.startswith("States.Format("):
        template, *args = [a.strip() for a in
                           re.findall(r"'[^']*'|\$[^,)]*", expression[len("States.Format("):])]
        text = template.strip("'")
        for arg in args:
            text = text.replace("{}", str(_path(document, arg, context)), 1)
        return text
    if expression.startswith("States.StringToJson("):
        return json.loads(re.search(r"'([^']*)'", expression).group(1))
    return f"<{expression}>"


def evaluate(parameters, document, context):
    """A Task's Parameters on a document, as Step Functions would (paths, intrinsics)."""
    if isinstance(parameters, list):
        return [evaluate(p, document, context) for p in parameters]
    if not isinstance(parameters, dict):
        return parameters
    out = {}
    for key, value in parameters.items():
        if key.endswith(".$"):
            out[key[:-2]] = (_intrinsic(value, document, context) if value.startswith("States.")
                             else _path(document, value, context))
        else:
            out[key] = evaluate(value, document, context)
    return out


def _states(definition: dict):
    """(name, state) of every state, nested Map/Parallel states included."""
    for name, state in definition["States"].items():
        yield name, state
        processor = state.get("ItemProcessor") or state.get("Iterator")
        if processor:
            yield from _states(processor)
        for branch in state.get("Branches", []):
            yield from _states(branch)


def _sagemaker_resources(parameters: dict) -> list[str]:
    arns = []
    for key, kind in _SAGEMAKER_NAMES.items():
        if isinstance(parameters.get(key), str):
            arns.append(sagemaker_arn(kind, parameters[key]))
    package = parameters.get("ModelPackageName")
    if isinstance(package, str):
        arns.append(package if package.startswith("arn:") else
                    sagemaker_arn("model-package", package))
    return arns


TARGET_TRACKING_ALARM = "TargetTracking-{resource}-AlarmHigh-0a1b2c3d-4e5f"
AUTOSCALING_SERVICE_ROLE = (f"arn:{PARTITION}:iam::{ACCOUNT}:role/aws-service-role/"
                            "sagemaker.application-autoscaling.amazonaws.com/"
                            "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint")


def _autoscaling_extras(role: str, api: str, parameters: dict, state: str,
                        stage_config: str | None) -> list[Call]:
    """What Application Auto Scaling does as the caller for a SageMaker variant (AWS's
    "Application Auto Scaling permissions for SageMaker": DescribeEndpoint,
    DescribeEndpointConfig, UpdateEndpointWeightsAndCapacities, the target-tracking
    alarms, the service-linked role)."""
    if parameters.get("ServiceNamespace") != "sagemaker":
        return []
    resource_id = parameters["ResourceId"]  # endpoint/<name>/variant/<variant>
    endpoint = resource_id.split("/")[1]
    why = f"{state}: Application Auto Scaling on a SageMaker variant ({api})"
    alarm = _arn("cloudwatch", "alarm:" + TARGET_TRACKING_ALARM.format(resource=resource_id))
    calls = [Call(role, f"cloudwatch:{a}", alarm, why)
             for a in ("PutMetricAlarm", "DescribeAlarms", "DeleteAlarms")]
    if api == "RegisterScalableTarget":
        calls += [Call(role, "sagemaker:DescribeEndpoint", sagemaker_arn("endpoint", endpoint), why),
                  Call(role, "sagemaker:UpdateEndpointWeightsAndCapacities",
                       sagemaker_arn("endpoint", endpoint), why),
                  Call(role, "iam:CreateServiceLinkedRole", AUTOSCALING_SERVICE_ROLE, why)]
        if stage_config:
            calls.append(Call(role, "sagemaker:DescribeEndpointConfig",
                              sagemaker_arn("endpoint-config", stage_config), why))
    return calls


def state_machine_calls(resolved: Resolved, logical: str, sample_input: dict) -> list[Call]:
    """Every call the state machine's role makes, derived from its definition."""
    properties = resolved.properties(logical)
    role = resolved.role_of(properties["RoleArn"])
    definition = properties.get("Definition") or json.loads(properties["DefinitionString"])
    machine_arn = resolved.ref(logical)
    machine_name = machine_arn.rsplit(":", 1)[-1]
    context = {"Execution": {"Input": sample_input,
                             "Id": _arn("states", f"execution:{machine_name}:sample")},
               "Task": {"Token": "sample-token"}}
    document = copy.deepcopy(sample_input)
    for _, state in _states(definition):  # Pass states compute what later states read
        if state["Type"] == "Pass" and "Parameters" in state:
            result_path = state.get("ResultPath", "$")
            value = evaluate(state["Parameters"], document, context)
            if result_path == "$":
                document = value
            else:
                document[result_path[2:]] = value
    calls = []
    for name, state in _states(definition):
        if state["Type"] == "Map" and state.get("ItemProcessor", {}).get(
                "ProcessorConfig", {}).get("Mode") == "DISTRIBUTED":
            why = f"{name}: Distributed Map children"
            calls += [Call(role, "states:StartExecution", machine_arn, why)]
            executions = _arn("states", f"execution:{machine_name}/{name}:sample-child")
            calls += [Call(role, f"states:{a}", executions, why)
                      for a in ("DescribeExecution", "StopExecution")]
            reader = state.get("ItemReader")
            if reader:
                p = evaluate(reader.get("Parameters", {}), document, context)
                why = f"{name}: ItemReader {reader['Resource']}"
                if reader["Resource"].endswith("s3:getObject"):
                    calls.append(Call(role, "s3:GetObject",
                                      f"arn:aws:s3:::{p['Bucket']}/{p['Key']}", why))
                elif reader["Resource"].endswith("s3:listObjectsV2"):
                    calls.append(Call(role, "s3:ListBucket", f"arn:aws:s3:::{p['Bucket']}", why))
                else:
                    raise AssertionError(f"{name}: unknown ItemReader {reader['Resource']}")
            writer = state.get("ResultWriter")
            if writer:
                p = evaluate(writer.get("Parameters", {}), document, context)
                key = f"arn:aws:s3:::{p['Bucket']}/{p['Prefix']}sample-map-run/SUCCEEDED_0.json"
                why = f"{name}: ResultWriter"
                calls += [Call(role, a, key, why) for a in (
                    "s3:PutObject", "s3:ListMultipartUploadParts", "s3:AbortMultipartUpload")]
        if state["Type"] != "Task":
            continue
        resource = state["Resource"]
        parameters = evaluate(state.get("Parameters", {}), document, context)
        why = f"{name}: {resource}"
        if resource.startswith("arn:aws:states:::aws-sdk:"):
            service, api = resource.removeprefix("arn:aws:states:::aws-sdk:").split(":")
            api = api[0].upper() + api[1:]
            prefix = _SERVICE_PREFIX.get(service, service)
            targets = _sagemaker_resources(parameters) if prefix == "sagemaker" else []
            if prefix == "application-autoscaling":
                targets = [_arn("application-autoscaling", "scalable-target/0a1b2c3d4e5f")]
                stage = name.removesuffix(api)
                stage_config = (document.get("settings", {}).get(stage.lower(), {})
                                .get("ResourceName"))
                calls += _autoscaling_extras(role, api, parameters, name, stage_config)
            if prefix == "lambda" and "FunctionName" in parameters:
                function = parameters["FunctionName"]
                targets = [function if function.startswith("arn:") else
                           _arn("lambda", f"function:{function}")]
            if not targets:
                raise AssertionError(f"{name}: cannot tell which resource {resource} acts on")
            calls += [Call(role, f"{prefix}:{api}", t, why) for t in targets[:1]]
            if prefix == "sagemaker" and parameters.get("Tags"):
                calls.append(Call(role, "sagemaker:AddTags", targets[0], why + " (Tags)"))
            if parameters.get("ExecutionRoleArn"):
                calls.append(Call(role, "iam:PassRole", parameters["ExecutionRoleArn"], why))
            alarms = (parameters.get("DeploymentConfig", {})
                      .get("AutoRollbackConfiguration", {}).get("Alarms", []))
            calls += [Call(role, "cloudwatch:DescribeAlarms",
                           _arn("cloudwatch", f"alarm:{a['AlarmName']}"), why + " rollback alarm")
                      for a in alarms]
        elif resource == "arn:aws:states:::lambda:invoke":
            function = parameters["FunctionName"]
            arn = function if function.startswith("arn:") else _arn("lambda", f"function:{function}")
            calls.append(Call(role, "lambda:InvokeFunction", arn, why))
        elif resource == "arn:aws:states:::codebuild:startBuild.sync":
            project = _arn("codebuild", f"project/{parameters['ProjectName']}")
            calls += [Call(role, f"codebuild:{a}", project, why)
                      for a in ("StartBuild", "StopBuild", "BatchGetBuilds")]
            rule = _arn("events", "rule/StepFunctionsGetEventsForCodeBuildStartBuildRule")
            calls += [Call(role, f"events:{a}", rule, why + " (managed rule)")
                      for a in ("PutTargets", "PutRule", "DescribeRule")]
        elif resource in ("arn:aws:states:::sns:publish",
                          "arn:aws:states:::sns:publish.waitForTaskToken"):
            calls.append(Call(role, "sns:Publish", parameters["TopicArn"], why))
        else:
            raise AssertionError(f"{name}: no rule for the permissions of {resource}")
    return calls


# ----------------------------------------------------------------------------- recorded calls

class CallRecorder:
    """Records (IAM action, resource ARN) of every botocore call while installed, via a
    `before-call` hook on each client created meanwhile."""

    def __init__(self, answers: dict | None = None):
        """answers: {IAM action: params -> parsed response} for the calls moto cannot
        answer (they are recorded all the same, then answered without moto)."""
        self.calls: list[tuple[str, str]] = []
        self.answers = answers or {}

    def __enter__(self):
        import botocore.client

        self._original = botocore.client.BaseClient.__init__
        recorder = self

        def init(client, *args, **kwargs):
            recorder._original(client, *args, **kwargs)
            # the API parameters (names, ARNs) are seen before serialisation; an answer
            # given at before-call replaces the request
            client.meta.events.register("before-parameter-build", recorder._record)
            client.meta.events.register("before-call", recorder._answer)
        botocore.client.BaseClient.__init__ = init
        return self

    def __exit__(self, *exc):
        import botocore.client

        botocore.client.BaseClient.__init__ = self._original

    def _answer(self, model, **_):
        action, params = self._last
        if action in self.answers:
            from botocore.awsrequest import AWSResponse
            return AWSResponse("https://answered.locally", 200, {}, None), \
                self.answers[action](params)
        return None

    def _record(self, model, params, **_):
        service = model.service_model
        prefix = service.metadata.get("signingName") or service.endpoint_prefix
        prefix = _SERVICE_PREFIX.get(prefix, prefix)
        action = f"{prefix}:{model.name}"
        actions = _ACTION_ALIAS.get(action, [action])
        resource = _resource_of(prefix, params)
        for a in actions:
            self.calls.append((a, resource))
        if action == "s3:CopyObject":
            source = params["CopySource"]
            source = source if isinstance(source, str) else f"{source['Bucket']}/{source['Key']}"
            self.calls.append(("s3:GetObject", f"arn:aws:s3:::{source.lstrip('/')}"))
        self._last = (action, params)

    def as_calls(self, role: str, why: str) -> list[Call]:
        return [Call(role, a, r, why) for a, r in dict.fromkeys(self.calls)]


def _resource_of(prefix: str, params: dict) -> str:
    if prefix == "s3":
        bucket = params.get("Bucket", "")
        return f"arn:aws:s3:::{bucket}/{params['Key']}" if "Key" in params else \
            f"arn:aws:s3:::{bucket}"
    if prefix == "sagemaker":
        arns = _sagemaker_resources(params)
        return arns[0] if arns else "*"
    if prefix == "states":
        for key in ("executionArn", "stateMachineArn"):
            if key in params:
                return params[key]
        if "taskToken" in params:
            return "*"
    if prefix == "lambda" and "FunctionName" in params:
        name = params["FunctionName"]
        return name if name.startswith("arn:") else _arn("lambda", f"function:{name}")
    if prefix == "codebuild" and "projectName" in params:
        return _arn("codebuild", f"project/{params['projectName']}")
    return "*"


# ----------------------------------------------------------------------------- triggers

def _target_calls(resolved: Resolved, role: str, target_arn: str, why: str,
                  target: dict, scheduler: bool = False) -> list[Call]:
    """What EventBridge or Scheduler does as the target's role to deliver to it."""
    calls = []
    if ":states:" in target_arn and ":stateMachine:" in target_arn:
        calls.append(Call(role, "states:StartExecution", target_arn, why))
    elif ":sagemaker:" in target_arn and ":pipeline/" in target_arn:
        calls.append(Call(role, "sagemaker:StartPipelineExecution", target_arn.lower(), why))
    elif ":codepipeline:" in target_arn:
        calls.append(Call(role, "codepipeline:StartPipelineExecution", target_arn, why))
    elif target_arn.startswith("arn:aws:scheduler:::aws-sdk:"):
        service, api = target_arn.removeprefix("arn:aws:scheduler:::aws-sdk:").split(":")
        api = api[0].upper() + api[1:]
        request = json.loads(target["Input"])
        resources = _sagemaker_resources(request) if service == "sagemaker" else ["*"]
        calls.append(Call(role, f"{_SERVICE_PREFIX.get(service, service)}:{api}",
                          resources[0].replace("<aws.scheduler.execution-id>", "1a2b"), why))
        if "RoleArn" in request:
            calls.append(Call(role, "iam:PassRole", request["RoleArn"], why + " (RoleArn)"))
    else:
        raise AssertionError(f"{why}: no rule for delivering to {target_arn}")
    dead_letters = target.get("DeadLetterConfig", {}).get("Arn")
    # Scheduler sends undeliverable ones as the target's role; EventBridge rules as
    # themselves, which the queue's policy must allow (tests/infra/test_deploy_flow.py)
    if dead_letters and scheduler:
        calls.append(Call(role, "sqs:SendMessage", dead_letters, why + " (dead letters)"))
    return calls


def trigger_calls(resolved: Resolved) -> list[Call]:
    """Every rule's and schedule's delivery, as its role; CodePipeline's actions as its."""
    calls = []
    for logical, properties in resolved.of_type("AWS::Events::Rule").items():
        for target in properties.get("Targets", []):
            if "RoleArn" in target:
                calls += _target_calls(resolved, resolved.role_of(target["RoleArn"]),
                                       target["Arn"], f"{logical} target", target)
    for logical, properties in resolved.of_type("AWS::Scheduler::Schedule").items():
        target = properties["Target"]
        calls += _target_calls(resolved, resolved.role_of(target["RoleArn"]), target["Arn"],
                               f"{logical} target", target, scheduler=True)
    for logical, properties in resolved.of_type("AWS::CodePipeline::Pipeline").items():
        role = resolved.role_of(properties["RoleArn"])
        store = properties["ArtifactStore"]["Location"]
        why = f"{logical} artifact store"
        calls += [Call(role, a, f"arn:aws:s3:::{store}/{logical[:20]}/Source/abc.zip", why)
                  for a in ("s3:PutObject", "s3:GetObject", "s3:GetObjectVersion")]
        for stage in properties["Stages"]:
            for action in stage["Actions"]:
                kind = action["ActionTypeId"]["Provider"]
                why = f"{logical} {stage['Name']}/{action['Name']} ({kind})"
                configuration = action["Configuration"]
                if kind == "S3":
                    bucket, key = configuration["S3Bucket"], configuration["S3ObjectKey"]
                    calls += [Call(role, a, f"arn:aws:s3:::{bucket}/{key}", why)
                              for a in ("s3:GetObject", "s3:GetObjectVersion")]
                    calls += [Call(role, a, f"arn:aws:s3:::{bucket}", why)
                              for a in ("s3:GetBucketVersioning", "s3:ListBucket")]
                elif kind == "CodeBuild":
                    project = _arn("codebuild", f"project/{configuration['ProjectName']}")
                    calls += [Call(role, f"codebuild:{a}", project, why)
                              for a in ("StartBuild", "BatchGetBuilds")]
                elif kind == "CodeStarSourceConnection":
                    calls.append(Call(role, "codestar-connections:UseConnection",
                                      configuration["ConnectionArn"], why))
                else:
                    raise AssertionError(f"{why}: no rule for {kind}")
    return calls
