"""AWS Lambda functions. boto3 and the standard library only: no project imports."""
