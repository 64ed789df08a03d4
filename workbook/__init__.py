"""The verification workbook: the lab that proves, with real calls, what ``retrylib`` claims.

It is its own package, beside the library: ``retrylib`` never imports it. It holds the
runner (papermill and nbconvert), the experiments behind each notebook, the parameter rules,
the checks that feed the completion matrix, the plots, the report export (each report leads
with its verdict; ``reports.py``, ``redact.py``, ``templates/``) and the index of a run
(``index.py``: ``index.html`` and ``README.md`` in the output folder). It needs the
``[workbook]``, ``[local]``, ``[litellm]`` and ``[testing]`` extras (``make setup`` installs them).

::

    python -m workbook run [--params params/default.yaml] [--only 01,03] [--output-dir reports]
"""
