"""scones-mlops: the model build, approval flow and inference workflow behind
Scones Unlimited's delivery-vehicle classifier (bicycle vs motorcycle)."""
from setuptools import find_packages, setup

setup(
    name="scones-mlops",
    version="0.1.0",
    description="SageMaker Pipeline + Step Functions workflow for the Scones Unlimited "
    "bicycle/motorcycle classifier, runnable locally with no AWS account",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["app", "app.*", "infra", "infra.*", "scones", "scones.*",
                                    "pipelines", "pipelines.*", "workflow", "workflow.*",
                                    "lambdas", "lambdas.*"])
    + ["scones.configs"],
    # The configuration layers and the job scripts ship inside the wheel: an installed
    # `scones` needs no source tree (configs/ becomes the package data scones/configs/).
    package_dir={"scones.configs": "configs"},
    package_data={"scones.configs": ["*.yaml"], "pipelines": ["jobs/*.py"],
                  "infra": ["*.json"], "app.ui": ["templates/*.html", "static/*"]},
    install_requires=[
        "sagemaker>=2.250,<3",
        "stepfunctions==2.3.0",
        "setuptools<81",
        "boto3",
        "torch==2.13.0",
        "numpy",
        "pillow",
        "pyyaml",
        "matplotlib",
        "rich",   # console tables (scones.console)
        # The local endpoint: waitress is its HTTP server; sagemaker-inference is the
        # toolkit SageMaker's PyTorch container serves inference.py with (its Transformer),
        # so the local endpoint answers exactly what the container would.
        "waitress==3.0.2",   # also the local Studio's (`scones ui`)
        "sagemaker-inference==1.10.1",
        # moto is the local engine (S3 for the SDK's code uploads, Step Functions'
        # interpreter), not only a test tool.
        "moto[s3,stepfunctions,sagemaker,lambda,iam,events]==5.2.5",
        # the local Studio (`scones ui`): Flask pages on waitress, plotly charts offline
        "flask",
        "plotly",
    ],
    extras_require={
        # parliament: the IAM proof (tests/infra/test_iam_proof.py) checks every action
        # name in the templates' policies against IAM's own list with it
        # openapi-spec-validator: moto's CloudFormation imports it (moto's apigateway); the
        # rehearsal (tests/infra/test_rehearsal.py) creates the project stack with it
        # flask-cors: moto's server imports it; the rehearsal serves moto to subprocesses
        # pytest-xdist: `make test` runs the files on several workers (most tests wait on
        # subprocesses, endpoints and moto, so 2 cores keep 3 workers busy)
        "test": ["pytest", "pytest-xdist", "cfn-lint", "import-linter", "nbclient", "ipykernel", "parliament",
                 "selenium", "openapi-spec-validator", "flask-cors"],
        "dev": ["pytest", "cfn-lint", "import-linter"],
    },
    entry_points={
        "console_scripts": [
            "scones=app.cli.main:main",
            "run-pipeline=app.cli.run_pipeline:main",
            "get-pipeline-definition=app.cli.get_pipeline_definition:main",
        ]
    },
)
