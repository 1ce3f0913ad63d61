"""scones-mlops: the model build, approval flow and inference workflow behind
Scones Unlimited's delivery-vehicle classifier (bicycle vs motorcycle)."""
from setuptools import find_packages, setup

setup(
    name="scones-mlops",
    version="0.1.0",
    description="SageMaker Pipeline + Step Functions workflow for the Scones Unlimited "
    "bicycle/motorcycle classifier, runnable locally with no AWS account",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["pipelines", "pipelines.*", "workflow", "workflow.*",
                                    "lambdas", "lambdas.*"]),
    package_data={"": ["*.yaml", "*.json"]},
    include_package_data=True,
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
        # moto is the local engine (S3 for the SDK's code uploads, Step Functions'
        # interpreter), not only a test tool.
        "moto[s3,stepfunctions,sagemaker,lambda,iam,events]==5.2.5",
    ],
    extras_require={
        "test": ["pytest", "cfn-lint"],
        "dev": ["pytest", "cfn-lint"],
    },
    entry_points={
        "console_scripts": [
            "scones=pipelines.cli:main",
            "run-pipeline=pipelines.run_pipeline:main",
            "get-pipeline-definition=pipelines.get_pipeline_definition:main",
        ]
    },
)
