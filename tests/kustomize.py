"""A small `kustomize build` for checking deploy/k8s without the kustomize
binary (no Debian or PyPI package ships it). It supports what our
kustomizations use: resources (files and directories), namespace, labels
(with selectors), configMapGenerator (files, behavior: replace), images and
strategic-merge patches (lists of named items merged by name). Anything else
fails loudly, so the manifests cannot quietly outgrow the check."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SUPPORTED = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "labels",
    "configMapGenerator",
    "images",
    "patches",
}


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(i, dict) and "name" in i for i in base + patch)
    ):
        by_name = {item["name"]: item for item in base}
        for item in patch:
            by_name[item["name"]] = _merge(by_name.get(item["name"], {}), item)
        return list(by_name.values())
    return patch


def _label(doc: dict[str, Any], pairs: dict[str, str], selectors: bool) -> None:
    doc.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
    if not selectors:
        return
    spec = doc.get("spec", {})
    if doc["kind"] in ("Deployment", "StatefulSet", "PodDisruptionBudget"):
        selector = spec.setdefault("selector", {})
        selector["matchLabels"] = {**(selector.get("matchLabels") or {}), **pairs}
    if doc["kind"] == "Service":
        spec["selector"] = {**(spec.get("selector") or {}), **pairs}
    template = spec.get("template")
    if template is not None:
        template.setdefault("metadata", {}).setdefault("labels", {})
        template["metadata"]["labels"] = {
            **(template["metadata"]["labels"] or {}),
            **pairs,
        }


def build(directory: Path) -> list[dict[str, Any]]:
    """The documents `kustomize build directory` would print (no hash suffixes)."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise ValueError(
            f"{directory}: unsupported kustomization fields {sorted(unknown)}"
        )
    docs: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        if path.is_dir():
            docs += build(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for generator in spec.get("configMapGenerator", []):
        data = {Path(f).name: (directory / f).read_text() for f in generator["files"]}
        config_map = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": generator["name"]},
            "data": data,
        }
        if generator.get("behavior") == "replace":
            docs = [
                d
                for d in docs
                if not (
                    d["kind"] == "ConfigMap"
                    and d["metadata"]["name"] == generator["name"]
                )
            ]
        docs.append(config_map)
    for patch_entry in spec.get("patches", []):
        patch = yaml.safe_load((directory / patch_entry["path"]).read_text())
        for index, doc in enumerate(docs):
            if (
                doc["kind"] == patch["kind"]
                and doc["metadata"]["name"] == patch["metadata"]["name"]
            ):
                docs[index] = _merge(doc, patch)
    for labels in spec.get("labels", []):
        for doc in docs:
            _label(doc, labels["pairs"], labels.get("includeSelectors", False))
    for image in spec.get("images", []):
        for doc in docs:
            for container in (
                doc.get("spec", {})
                .get("template", {})
                .get("spec", {})
                .get("containers", [])
            ):
                if container["image"] == image["name"]:
                    name = image.get("newName", image["name"])
                    container["image"] = f"{name}:{image.get('newTag', 'latest')}"
    if "namespace" in spec:
        for doc in docs:
            if doc["kind"] != "Namespace":
                doc["metadata"]["namespace"] = spec["namespace"]
    return copy.deepcopy(docs)
