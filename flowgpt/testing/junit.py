"""A test file's result as JUnit XML, the format CI systems read (GitHub, GitLab, Jenkins).

One ``<testsuite>`` per model run (one when models are not compared), one ``<testcase>``
per case; a case whose expectations did not hold has a ``<failure>``, one whose provider
could not be reached an ``<error>``; both carry the explanation ``flowgpt test`` prints.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from flowgpt.errors import redact
from flowgpt.testing.results import CaseResult, SuiteResult

__all__ = ["junit_xml"]


def _first_line(case: CaseResult) -> str:
    if case.error:
        return case.error.splitlines()[0]
    failures = case.failures
    if failures:
        first = failures[0]
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        return f"{first.subject} should {first.description}{more}"
    return case.status


def junit_xml(result: SuiteResult) -> str:
    """The result as a JUnit XML document (text)."""
    root = ET.Element("testsuites", name="flowgpt test")
    totals: dict[str, int] = {"tests": 0, "failures": 0, "errors": 0}
    total_time = 0.0
    for model in result.models:
        cases = [c for c in result.cases if c.model == model]
        name = result.tests if model is None else f"{result.tests} [{model}]"
        time_s = sum(c.latency_s for c in cases)
        counts: dict[str, int] = {
            "tests": len(cases),
            "failures": sum(c.status == "failed" for c in cases),
            "errors": sum(c.status == "error" for c in cases),
        }
        attributes = {k: str(v) for k, v in counts.items()}
        attributes.update(name=name, skipped="0", time=f"{time_s:.3f}")
        suite = ET.SubElement(root, "testsuite", attributes)
        props = ET.SubElement(suite, "properties")
        for key, value in (("workflow", result.workflow), ("mode", result.mode)):
            ET.SubElement(props, "property", name=key, value=value)
        if model is not None:
            ET.SubElement(props, "property", name="model", value=model)
        classname = result.workflow if model is None else f"{result.workflow} [{model}]"
        for case in cases:
            element = ET.SubElement(
                suite, "testcase", classname=classname, name=case.name, time=f"{case.latency_s:.3f}"
            )
            if case.status != "passed":
                tag = "error" if case.status == "error" else "failure"
                problem = ET.SubElement(
                    element, tag, message=redact(_first_line(case)), type=case.status
                )
                problem.text = redact(case.explain())
        for key in totals:
            totals[key] += counts[key]
        total_time += time_s
    for key, count in totals.items():
        root.set(key, str(count))
    root.set("time", f"{total_time:.3f}")
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{body}\n'
