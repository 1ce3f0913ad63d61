"""Inference workflow: the Step Functions state machine, local endpoint and engine."""
