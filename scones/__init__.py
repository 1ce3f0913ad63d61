"""scones-mlops: the delivery-vehicle classifier's model build, deployment and inference."""
