"""Figures and the HTML report, drawn from the saved results of the tasks."""
