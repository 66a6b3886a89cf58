#!/usr/bin/env python3
"""Checks the security context of every pod the chart renders (`make chart-check`).

Reads a `helm template` render on stdin. Each Deployment and StatefulSet pod must run as non-root
with a numeric user (a kubelet cannot verify a user name), the RuntimeDefault seccomp profile, and
each container: no privilege escalation, a read-only root filesystem, every capability dropped,
resource requests and limits. Prints one line per problem and exits 1 if there is any.
"""
import sys

import yaml

problems = []
pods = 0
for doc in yaml.safe_load_all(sys.stdin):
    if not doc or doc.get("kind") not in ("Deployment", "StatefulSet"):
        continue
    name = f'{doc["kind"]}/{doc["metadata"]["name"]}'
    spec = doc["spec"]["template"]["spec"]
    pod = spec.get("securityContext") or {}
    pods += 1
    if pod.get("runAsNonRoot") is not True:
        problems.append(f"{name}: pod securityContext.runAsNonRoot is not true")
    if (pod.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append(f"{name}: pod seccompProfile is not RuntimeDefault")
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        where = f'{name} container {c["name"]}'
        sc = c.get("securityContext") or {}
        for field in ("runAsUser", "runAsGroup"):
            value = sc.get(field, pod.get(field))
            if not isinstance(value, int) or value == 0:
                problems.append(f"{where}: {field} is {value!r}, not a numeric non-root id")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem is not true")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            problems.append(f"{where}: capabilities do not drop ALL")
        res = c.get("resources") or {}
        if not res.get("requests") or not res.get("limits"):
            problems.append(f"{where}: resources lack requests or limits")

if pods == 0:
    problems.append("no Deployment or StatefulSet in the render")
for p in problems:
    print(f"chart security: {p}")
if problems:
    sys.exit(1)
print(f"chart security: {pods} pod templates checked")
