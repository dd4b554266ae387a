"""Config self-healing for services, first vLLM: observer, actuators, simulator (DESIGN.md §1, §5).

Kept empty of imports on purpose: ``healing.tuning.commands`` is imported at CLI start.
"""
