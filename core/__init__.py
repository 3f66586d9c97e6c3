"""The ground floor: what every process of AAR needs and nothing of AAR's own.

Paths of ``AAR_HOME`` (:mod:`core.paths`), logging (:mod:`core.logs`), child
processes (:mod:`core.procs`), the CLI's consoles (:mod:`core.console`), the process
table (:mod:`core.processes`) and the audit-query interface (:mod:`core.audit`).
Nothing here imports another AAR package; every other package may import this one.
"""
