"""The HTML report of a run folder (`hsae report RUN`): see `hsae.report.build`."""

from hsae.report.browser import browser_check, find_chromium
from hsae.report.build import INDEX_FILE, SCREENSHOT_FILE, SECTION_ORDER, build_report
from hsae.report.collect import SUMMARY_FILE
from hsae.report.computed import code_sparsity
from hsae.report.markdown import markdown_to_html

__all__ = [
    "INDEX_FILE",
    "SCREENSHOT_FILE",
    "SECTION_ORDER",
    "SUMMARY_FILE",
    "browser_check",
    "build_report",
    "code_sparsity",
    "find_chromium",
    "markdown_to_html",
]
