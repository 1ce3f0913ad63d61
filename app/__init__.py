"""The front door: the `scones` CLI and the SageMaker project template's CLIs (app/cli/), and
`scones demo` (app/demo.py). The top layer: it composes the model build (pipelines), the
inference workflow (workflow), the AWS resources (infra) and the core (scones); nothing
imports it."""
