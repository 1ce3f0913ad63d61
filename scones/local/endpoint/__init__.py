"""The local SageMaker endpoint: a real HTTP server on 127.0.0.1.

It loads a model.tar.gz the way SageMaker's PyTorch serving container does (extract it,
import code/inference.py, and serve it through sagemaker-inference's Transformer: model_fn
once, then per request input_fn -> predict_fn -> output_fn), over waitress, and answers
both the container contract (GET /ping, POST /invocations) and the SageMaker Runtime
route (POST /endpoints/{name}/invocations), so a plain boto3 `sagemaker-runtime` client reaches it through
AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=http://127.0.0.1:PORT.

Which model it serves: the endpoint state file <workspace>/endpoints/<name>.json
(written on approval/deploy; re-read whenever its mtime changes), else the registry's
newest Approved version, else - before any approval - the newest registered one.
Sampled invocations are captured in SageMaker's data-capture JSON Lines layout.

The package re-exports nothing: importing one of its modules (say, capture) must not load
the server and waitress, which the CodeBuild model build does not install.
"""
