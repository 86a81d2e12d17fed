"""The operator's commands' logic: submit, status, wait, get, retry, dead letters, report.
Each module is named after its command; the command-line front door is :mod:`ocrpipe.cli`."""
