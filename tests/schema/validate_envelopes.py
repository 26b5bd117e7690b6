#!/usr/bin/env python3
"""Checks docs/envelope.schema.json against real envelopes.

1. The schema is a valid draft 2020-12 schema.
2. For every body the envelope_samples program writes (real ones from encode_envelope, and
   mutations of them), the schema accepts it exactly when decode_envelope does. Cases marked
   decoder_only break a rule the schema cannot express: the decoder must reject them and the
   schema accept them (if the schema starts rejecting one, unmark it).
3. The schema rejects an envelope without "id" (checked here too, independently of the samples).
4. Every ```json block in docs/envelope.md is an envelope that the schema and the decoder accept.

Prints one line per failure and a closing "N passed, N failed" line; exits 1 on any failure.
"""
import argparse
import json
import re
import subprocess
import sys

import jsonschema


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", required=True, help="the envelope_samples program")
    parser.add_argument("--schema", required=True, help="docs/envelope.schema.json")
    parser.add_argument("--doc", required=True, help="docs/envelope.md")
    args = parser.parse_args()

    passed = 0
    failures = []

    with open(args.schema, encoding="utf-8") as f:
        schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)

    def schema_error(document):
        error = jsonschema.exceptions.best_match(validator.iter_errors(document))
        return None if error is None else f"{list(error.absolute_path)}: {error.message}"

    def body_schema_error(body):
        try:
            document = json.loads(body)
        except ValueError as e:
            return f"not JSON: {e}"
        return schema_error(document)

    output = subprocess.run([args.samples], check=True, capture_output=True, text=True).stdout
    samples = [json.loads(line) for line in output.split("\n") if line.strip()]
    if not samples:
        failures.append("envelope_samples wrote no samples")
    real = 0
    for sample in samples:
        name, body = sample["case"], sample["body"]
        real += name.startswith("real: ")
        rejection = body_schema_error(body)
        if sample["decoder_only"]:
            if sample["decodes"]:
                failures.append(f"{name}: marked decoder_only but the decoder accepts it")
            elif rejection is not None:
                failures.append(f"{name}: the schema now rejects it ({rejection}); unmark decoder_only")
            else:
                passed += 1
        elif sample["decodes"] and rejection is not None:
            failures.append(f"{name}: decoder accepts, schema rejects: {rejection}\n  body: {body}")
        elif not sample["decodes"] and rejection is None:
            failures.append(f"{name}: decoder rejects ({sample['error']}), schema accepts\n  body: {body}")
        else:
            passed += 1
    if real < 5:
        failures.append(f"only {real} real envelopes among the samples")
    for sample in samples:
        if sample["case"].startswith("real: ") and not sample["decodes"]:
            failures.append(f"{sample['case']}: a real envelope does not decode: {sample['error']}")

    # An envelope without "id" is rejected, whatever the samples say.
    first_real = next((s for s in samples if s["case"].startswith("real: ")), None)
    if first_real is not None:
        document = json.loads(first_real["body"])
        del document["id"]
        if schema_error(document) is None:
            failures.append('the schema accepts an envelope without "id"')
        else:
            passed += 1

    # The documentation's examples are real envelopes.
    with open(args.doc, encoding="utf-8") as f:
        blocks = re.findall(r"^```json\n(.*?)^```", f.read(), re.S | re.M)
    if not blocks:
        failures.append(f"{args.doc}: no ```json example")
    verdicts = subprocess.run([args.samples, "--decode"], check=True, capture_output=True, text=True,
                              input="".join(json.dumps(b) + "\n" for b in blocks)).stdout.split("\n")
    verdicts = [line for line in verdicts if line.strip()]
    if len(verdicts) != len(blocks):
        failures.append(f"envelope_samples --decode answered {len(verdicts)} of {len(blocks)} examples")
    for number, (block, line) in enumerate(zip(blocks, verdicts), start=1):
        verdict = json.loads(line)
        rejection = body_schema_error(block)
        if rejection is not None:
            failures.append(f"{args.doc}: json example {number}: schema rejects it: {rejection}")
        elif not verdict["decodes"]:
            failures.append(f"{args.doc}: json example {number}: decoder rejects it: {verdict['error']}")
        else:
            passed += 1

    for failure in failures:
        print("FAIL", failure)
    print(f"envelope_schema: {passed} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
