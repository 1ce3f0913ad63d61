"""AWS infrastructure as CloudFormation: the SageMaker Project template (project_template),
its deploy state machine (deploy_state_machine) and the upload bundle it references (package)."""
