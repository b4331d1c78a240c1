"""Jinja2 templating for prompts, ``when`` and ``for_each``: sandboxed rendering and static
reference discovery. jinja2 is imported only inside this package (flowgpt/templating/).

Threat model: templates come from the workflow file (written by its author, maybe shared);
inputs and model replies are data and are never rendered as templates, so they cannot
inject template code. The sandbox keeps templates from reaching Python internals, the
environment or mutating the shared context, and bounds what a render may build and how
long it may run (``_limits``): any template stays within a few hundred MB and seconds.

The render context the engine passes is plain data (see :func:`make_context`)::

    {
        "inputs": {"topic": "tea", "words": 600},
        "steps": {
            "outline": {"output": {...} | "text" | None, "text": "raw reply" | None,
                        "usage": {"prompt_tokens": 12, ...}, "skipped": False},
        },
        "section": "...",   # the ``as`` variable, only inside a for_each step
    }

Rendering rules beyond plain Jinja (chosen for prompts):
- undefined names are errors (strict), naming the step, the full path and a did-you-mean;
- ``{{ None }}`` prints nothing, a dict or list prints as JSON (not Python repr), and
  printing a function or other Python object is an error (``steps.a.output.title`` on a
  text step would otherwise print ``<built-in method title ...>``);
- on a dict, a key wins over a dict method of the same name (``inputs.items`` is the input
  called ``items``, not ``dict.items``);
- ``trim_blocks`` and ``lstrip_blocks`` are on (as in Hugging Face chat templates), so a
  ``{% for %}`` on its own line leaves no blank line; the final newline of a block scalar
  is dropped (Jinja's default);
- ``tojson`` keeps non-ASCII text as is (Chinese prompts) and keeps key order.

The package's private modules, each importing only those listed before it:
- ``_errors``: the public error classes and the private exceptions the sandbox raises;
- ``_limits``: the render limits (one value's size, one number's bits, a render's memory
  and time), measuring values, the per-render budget;
- ``_checks``: the checks before operations that could build a large value, the filters'
  wrappers;
- ``_sandbox``: the Jinja environment, printing rules, the bounded render;
- ``_references``: walking the AST for the names and paths a template reads;
- ``_explain``: turning a render failure into a message and a hint;
- ``_template``: :class:`Template`, the cached parsers, ``render``/``evaluate``/``references``;
- ``_analysis``: loops and conditions that depend on replies, private attribute reads;
- ``_context``: the render context (``make_context``, ``step_entry``, ``STEP_FIELDS``).

``MAX_SEQUENCE_ITEMS`` and ``MAX_POWER_BITS`` are re-exported for reading; the sandbox
reads them (and ``MAX_RENDER_BYTES``, ``MAX_RENDER_SECONDS``) from ``_limits`` at call
time, so patch them there.
"""

from __future__ import annotations

from flowgpt.templating._analysis import DynamicBlock, dynamic_blocks, private_attributes
from flowgpt.templating._context import STEP_FIELDS, make_context, step_entry
from flowgpt.templating._errors import TemplateRenderProblem, TemplateSyntaxProblem
from flowgpt.templating._limits import MAX_POWER_BITS, MAX_SEQUENCE_ITEMS
from flowgpt.templating._references import Reference, References
from flowgpt.templating._template import (
    Template,
    evaluate,
    parse_expression,
    parse_template,
    references,
    render,
    single_expression,
    strip_expression_braces,
)

__all__ = [
    "MAX_POWER_BITS",
    "MAX_SEQUENCE_ITEMS",
    "STEP_FIELDS",
    "DynamicBlock",
    "Reference",
    "References",
    "Template",
    "TemplateRenderProblem",
    "TemplateSyntaxProblem",
    "dynamic_blocks",
    "evaluate",
    "make_context",
    "parse_expression",
    "parse_template",
    "private_attributes",
    "references",
    "render",
    "single_expression",
    "step_entry",
    "strip_expression_braces",
]
