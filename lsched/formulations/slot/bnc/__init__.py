"""Branch-and-cut for the slot model: completion slots over the clique LP.

Notation of :mod:`lsched.formulations.bounds.clique`: a column ``x[j, c]`` says
request ``j`` completes at ``E_j = c``; the LP has one assignment row per
request, the KV / batch-cap / token-budget rows per slot and clique rows
``sum_{(j,c) in Q} x[j,c] <= 1`` over pairwise-conflicting placements. Its
integer points are exactly the schedules whose completions lie in the columns
(the rows are the slot model's rules written per completion). ``U`` is the
incumbent's integer objective (:meth:`~lsched.formulations.slot.SlotProblem.
integer_objective`: the objective less
:attr:`~lsched.formulations.slot.SlotProblem.objective_offset`); every LP value,
reduced cost and bound below is in those integer units, and the offset is added
back only when a bound is reported.

The search
----------
1. **Columns.** Only schedules of integer objective ``<= U - 1`` are worth
   finding. Their completions in an optimal schedule are at most the safe
   deadlines ``d_j(U - 1)`` of :mod:`lsched.formulations.slot.horizon` (latency
   and TTFT: every optimal schedule; makespan: some), so the columns are ``r_j +
   o_j <= c <= d_j(U - 1)``; a request with none proves ``U`` optimal. When
   ``U`` improves, the columns past the new deadlines are fixed at 0 globally.
2. **Root.** The LP is solved and clique cuts separated until none is violated
   (:func:`~lsched.formulations.bounds.clique.separate`, re-solved warm), then
   the root's reduced costs fix columns globally ("Fixing"), again after every
   improvement of ``U``.
3. **Nodes**, best first (smallest bound; deeper on ties). A node is the set of
   columns it allows; its LP is the one HiGHS model with the other columns'
   upper bounds at 0, solved from the last basis, with a few rounds of cuts
   (every clique row stays in the model: cliques are valid for every schedule,
   so globally). Then: an infeasible LP, or ``ceil(z - 1e-6) >= U``, prunes it;
   a list schedule in the order of the LP mean completions is offered (cheap
   rounding); an integral LP is a schedule, offered and closed; otherwise the
   node's reduced costs fix columns for its subtree and it is split on ``E_j <=
   t`` for the request and slot where the LP's cumulative completion mass is
   closest to 1/2: one child sets the upper bounds of ``x[j, c]``, ``c > t``,
   to 0, the other those of ``c <= t``. Both children inherit
   ``ceil(z - 1e-6)``.
4. **Bound.** The smallest bound over the open nodes (and the node being
   solved), never above ``U``; the driver rounds it
   (:func:`lsched.formulations.slot.model.round_bound`). An empty queue proves
   ``U`` optimal. On the time limit or a stop the incumbent and that bound come
   back.

An LNS phase (:func:`lsched.formulations.slot.lns.walk`) for ``lns_share`` of
the time limit runs after the root when the root leaves a gap: a better ``U``
prunes and fixes more.

Makespan is not a sum over columns, so its LP value bounds nothing; for it the
LP minimises ``sum c x[j, c]`` only to steer, and the tree is a feasibility
search for a schedule with every ``E_j <= U - 1``: a node is pruned only when
its LP is infeasible, an integral LP is a schedule that lowers ``U`` (the node
is searched again under the new deadlines), and an empty queue proves ``U``
optimal; until then the bound is the free one of the driver.

Symmetry
--------
Requests identical in release, prompt, output and weight can swap completions
(:meth:`~lsched.formulations.slot.SlotProblem.identical_groups`), so the LP
also holds ``E_i <= E_k`` for consecutive ones (``i < k``): per slot ``F_k(t)
<= F_i(t)`` with ``F_j(t) = sum_{c <= t} x[j, c]``, or, for windows wider than
:data:`.relaxation.PREFIX_ROWS_MAX_WIDTH`, ``sum_c c x[i, c] <= sum_c c x[k,
c]``. Every schedule has a copy with the same objective and those orders
(:meth:`~lsched.formulations.slot.SlotProblem.canonical`), so the search's
region keeps an optimal schedule; "every optimal schedule" below means every
such ordered one, and the CP-SAT finisher's own symmetry order is the same one.
After a branch on ``E_j``, columns of other requests that conflict with every
column left to ``j`` are removed from the child (:func:`.tree.propagate`).

Fixing
------
Let ``z`` be an optimal value of a node's LP (its region: the columns it
allows, every row added so far), ``y`` the row duals and ``d = c - A^T y`` the
reduced costs. For any point ``x'`` of the region, LP duality gives ``c x' >= z
+ sum_q d_q (x'_q - x*_q)``: the row terms ``y^T A x'`` are at least ``y^T A
x*`` because each nonzero ``y_r`` sits at the bound ``x*`` makes its row tight
and ``x'`` keeps that bound. An optimal basis has ``d_q >= 0`` where ``x*_q =
0`` and ``d_q <= 0`` where ``x*_q = 1``, so every term is nonnegative and

* a schedule using a column with ``x*_q = 0`` costs ``>= z + d_q``;
* a schedule leaving out a column with ``x*_q = 1`` costs ``>= z - d_q``.

A schedule worth finding has integer cost ``<= U - 1``; the objective's
coefficients are integers, so the rule, with the tolerance the slot model
rounds every LP bound by, is: **fix ``x_q = 0`` when ``x*_q = 0`` and ``z + d_q
> U - 1 + 1e-6``; fix ``x_q = 1`` (the request's other columns to 0) when
``x*_q = 1`` and ``z - d_q > U - 1 + 1e-6``** (:func:`.fixing.fixed_by_cost`).
Both remove only schedules of cost ``>= U`` from the region. Fixing at the root
is global; at a node, for its subtree. ``U`` only decreases, so a fixing stays
valid as it does.

The CP-SAT finisher
-------------------
``finisher="cpsat"``: after the root (cuts, fixing, LNS), CP-SAT (``events``,
:mod:`lsched.formulations.slot.cpsat`) runs with each start ``S_j`` restricted to
``{c - o_j : x[j, c]`` still allowed globally``}``, hinted with the incumbent.
Write ``U_f`` for the ``U`` the fixing was computed for. *Claim*: if the optimum
``OPT`` is below ``U_f``, every optimal schedule keeps its starts in these
domains. Its completions are within the deadlines ``d_j(U_f - 1)`` (step 1), it
lies in the root's region with every cut (cuts are valid), and its cost is
``<= U_f - 1``, so by "Fixing" no fixed column is one of its placements. Hence
CP-SAT's minimum over the domains is ``OPT`` when ``OPT < U_f``, and every
schedule outside the domains costs ``>= U_f``: the bound is ``min(CP-SAT's
bound, U_f)``, and ``U_f`` when CP-SAT proves the domains empty (then the
incumbent, outside them, is optimal). The symmetry order CP-SAT adds for
identical requests stays valid: the claim covers *every* optimal schedule, and
swapping identical requests maps optimal schedules to optimal schedules. This
needs the fixing to be exact: it is, up to the ``1e-6`` the slot model allows
every LP bound.
"""

from lsched.formulations.slot.bnc.search import FINISHERS, solve

__all__ = ["FINISHERS", "solve"]
