"""``policy:SPEC``: the audited model served with an output policy
(:class:`dlsec.output_policies.OutputPolicy`: ``label``, ``topk:K``, ``rounded:D``,
``topk-rounded:K,D``, ``noise:SIGMA``, ...; ``label-only`` and ``top1-rounded`` (the top
class's probability to two decimals) are the usual names). The weights are the model's own,
so white-box attacks see the undefended model; everything that goes through the API sees
the policy's answers. Training is unchanged: the poisoning columns do not apply."""

from __future__ import annotations

from dlsec.output_policies import OutputPolicy, PolicyError
from dlsec.scenarios.context import ScenarioContext
from dlsec.scenarios.defended import BuildSettings, DefenseError, Recipe, register_defense

ALIASES = {"label-only": "label", "top1-rounded": "topk-rounded:1,2"}


@register_defense("policy", kind="serving", parameter="SPEC",
                  summary="the model served with an output policy (label-only, top1-rounded, "
                  "topk:K, rounded:D, noise:SIGMA, ...)")
def recipe(ctx: ScenarioContext, parameter: str, settings: BuildSettings) -> Recipe:
    spec = ALIASES.get(parameter.lower(), parameter)
    try:
        policy = OutputPolicy.parse(spec)
    except PolicyError as exc:
        raise DefenseError(f"policy:{parameter}: {exc}") from None
    return Recipe(kind="serving", policy=policy,
                  describe=f"the model served with output policy {policy.spec()}",
                  settings={"policy": policy.spec()})
