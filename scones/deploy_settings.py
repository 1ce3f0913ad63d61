"""The approval Lambda's deployment settings, taken from the project configuration.

One function turns `deployment.<stage>` (and the monitoring defaults) into
`lambdas.deploy_approved_model.DeploySettings`: the deployments of both backends, the
workflow's capture Lambda environment and the local endpoint's default data capture all
read their settings here, so they never disagree.
"""
from __future__ import annotations

from lambdas import deploy_approved_model as deploy_logic
from scones.config import Config
from scones.errors import DeploymentError

# The inferenceId of a deployment's own probes (health check, bake): they go through the
# endpoint's real request path, capture included; monitoring leaves them out of traffic.
PROBE_INFERENCE_ID_PREFIX = "scones-deployment-probe-"


def deploy_settings(config: Config, stage: str = "prod") -> deploy_logic.DeploySettings:
    """The approval Lambda's settings for one stage's endpoint, taken from the project
    configuration (deployment.<stage>) instead of env."""
    settings = config.stage(stage)
    try:
        return deploy_logic.DeploySettings(
            endpoint_name=config.stage_endpoint_name(stage),
            execution_role_arn=config.aws.role_arn or "",
            model_package_group=config.pipeline.model_package_group,
            data_capture_s3_uri=config.data_capture_uri,
            capture_sampling_percentage=(settings.capture_sampling_percentage
                                         or config.monitoring.capture_sampling_percentage),
            instance_type=settings.instance_type,
            initial_instance_count=settings.instance_count,
            rollback_alarms=settings.rollback_alarms,
            traffic_routing=settings.traffic_routing,
            traffic_step_percent=settings.traffic_step_percent,
            traffic_wait_seconds=settings.traffic_wait_seconds,
            bake_seconds=int(settings.bake_seconds),
        )
    except deploy_logic.InvalidSettings as exc:
        raise DeploymentError(f"configuration cannot be deployed: {exc}") from None


def deploy_lambda_environment(config: Config) -> dict[str, str]:
    """The approval Lambda's environment for this configuration (its variables are read in
    lambdas/deploy_approved_model.DeploySettings.from_environ). The CloudFormation template
    replaces the role and the capture URI with its parameters. An approval deploys to
    staging; `scones endpoint promote` takes a tested version on to prod."""
    settings = deploy_settings(config, "staging")
    return {
        "ENDPOINT_NAME": settings.endpoint_name,
        "EXECUTION_ROLE_ARN": settings.execution_role_arn,
        "MODEL_PACKAGE_GROUP": settings.model_package_group,
        "DATA_CAPTURE_S3_URI": settings.data_capture_s3_uri,
        "CAPTURE_SAMPLING_PERCENTAGE": str(settings.capture_sampling_percentage),
        "INSTANCE_TYPE": settings.instance_type,
        "ROLLBACK_ALARMS": ",".join(settings.rollback_alarms),
        "TRAFFIC_ROUTING": settings.traffic_routing,
        "TRAFFIC_STEP_PERCENT": str(settings.traffic_step_percent),
        "TRAFFIC_WAIT_SECONDS": str(settings.traffic_wait_seconds),
        "BAKE_SECONDS": str(int(settings.bake_seconds)),
    }
