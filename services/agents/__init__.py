"""Researcher agents: one process per agent, Claude (``claude``) or an offline policy
(``offline``), both acting only through the tools in :mod:`services.agents.toolbox`."""
