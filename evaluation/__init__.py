"""Evaluation: metrics of the candidate and the blessed model on the same rows
(``evaluate``), the blessing rule (``gate``), ROC/confusion/calibration (``curves``), and
the HTML report (``report``, plots drawn by ``plots``)."""
