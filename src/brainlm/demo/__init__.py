"""``brainlm demo``: every capability of the paper end to end on the embedded real data.

:mod:`.settings` says how much of each step runs, :mod:`.steps` declares the steps (each returns
its part of the summary), :mod:`.runner` runs them in order and draws the report."""

from brainlm.demo.runner import command_line, run_demo
from brainlm.demo.settings import NETWORK_FEATURE, WINDOW_TRS, DemoSettings
from brainlm.demo.steps import STEPS, DemoRun, Step, SummaryPart

__all__ = ["DemoRun", "DemoSettings", "NETWORK_FEATURE", "STEPS", "Step", "SummaryPart", "WINDOW_TRS",
           "command_line", "run_demo"]
