"""The starter files ``flowgpt init NAME`` writes: a commented two-step workflow (plan as
JSON, then write), its system prompt in ``prompts/``, and a test file for ``flowgpt test``.
They validate as written and run with ``--mock``, so the first run needs no key."""

from __future__ import annotations

import re

__all__ = ["NAME_RULE", "starter_files"]

# A file name a workflow can have: the workflow's `name:` follows it.
NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

_WORKFLOW = """\
# {name}: a starter workflow. Every field is explained in docs/format.md.
# Editors: `flowgpt schema > workflow.schema.json`, then put
# `# yaml-language-server: $schema=workflow.schema.json` at the top of this file.
version: 1
name: {name}
description: Plan a short note as JSON, then write it.

defaults:                 # every step inherits these; a step may set its own
  model: gpt-4o-mini      # a Chat Completions model (--model overrides it for a run)
  temperature: 0.7
  max_tokens: 400         # the most a reply may use: also what estimates and budgets count

# Where requests go. Left out: OpenAI, or OPENAI_BASE_URL when it is set (a relay).
# provider:
#   base_url: https://api.openai.com/v1
#   api_key_env: OPENAI_API_KEY   # the NAME of the variable that holds your key, never the key

inputs:                   # checked before anything is sent
  topic: {{type: string, description: What the note is about}}

budget:
  max_cost_usd: 0.01      # the run stops before any call that could take it past this

steps:
  - id: plan
    system_file: prompts/{name}.md
    prompt: |
      Plan a short note about {{{{ inputs.topic }}}}. Reply with JSON: a title and two to
      four points.
    output:
      schema:             # the reply must be this JSON; its fields feed the next step
        type: object
        required: [title, points]
        properties:
          title: {{type: string}}
          points: {{type: array, items: {{type: string}}, minItems: 2, maxItems: 4}}
      retries: 1          # a reply that does not fit is asked again once, with the error

  - id: write             # runs after plan: its prompt reads plan's output
    prompt: |
      Write a short note titled "{{{{ steps.plan.output.title }}}}" covering:
      {{% for point in steps.plan.output.points %}}
      - {{{{ point }}}}
      {{% endfor %}}
    output:
      checks:
        - max_words: 250
        - not_contains: "As an AI"

outputs:                  # what `flowgpt run` prints
  title: "{{{{ steps.plan.output.title }}}}"
  note: "{{{{ steps.write.output }}}}"
"""

_PROMPT = """\
You are a clear, friendly writer. Keep sentences short and concrete, and never invent
facts you are not sure of.
"""

_TESTS = """\
# Tests for {name}.yaml (docs/testing.md). Record the replies once, then replay them
# offline, with no key and no cost, after every change to the prompts:
#   flowgpt test {name}.yaml --record --mock    (or without --mock, against the real API)
#   flowgpt test {name}.yaml
workflow: {name}.yaml
cases:
  - name: green tea
    inputs: {{topic: green tea}}
    expect:
      - step: plan
        schema: {{type: object, required: [title, points]}}
      - output: note
        not_contains: "As an AI"
      - cost_usd: {{max: 0.01}}
"""


def starter_files(name: str) -> dict[str, str]:
    """The files of a starter workflow called ``name``, by path relative to where they go.
    Raises ValueError when ``name`` cannot be a file name."""
    if not NAME_RULE.match(name):
        raise ValueError(
            f"{name!r} cannot name a workflow file: use letters, digits, '-' and '_' "
            "(e.g. `tea-notes`)"
        )
    return {
        f"{name}.yaml": _WORKFLOW.format(name=name),
        f"prompts/{name}.md": _PROMPT,
        f"{name}.test.yaml": _TESTS.format(name=name),
    }
