"""`get-pipeline-definition`: the SageMaker project template's command, printing (or writing
with -f) the pipeline definition JSON. With --env local it builds on moto's S3 and needs no
AWS account."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from app.cli.template import pipeline_from_args, run_template_cli, template_parser


def _parser():
    parser = template_parser("get-pipeline-definition",
                             "Print the model-build pipeline's definition JSON.")
    parser.add_argument("-f", "--file-name", default=None,
                        help="write the definition to this file instead of stdout")
    return parser


def _body(args) -> int:
    from pipelines.pipeline import pipeline_definition

    module, config = pipeline_from_args(args)
    definition = json.dumps(pipeline_definition(config, module.get_pipeline), indent=2)
    if args.file_name:
        Path(args.file_name).write_text(definition + "\n")
        print(f"wrote {args.file_name}", file=sys.stderr)
    else:
        print(definition)
    return 0


def main(argv=None) -> int:
    return run_template_cli(_body, _parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
