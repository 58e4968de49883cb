"""The one plugin boundary of Converge.

Every hook a plugin may implement is declared here, grouped by the stage
that calls it. Each docstring is the contract: when the hook is called,
what it gets, what it must return, and how the results of several plugins
combine. ``docs/plugins.md`` is generated from these docstrings and a test
fails when a hook is undocumented.

Plugins implement hooks with ``@engine.hookimpl`` and register through the
``converge`` entry-point group, exactly like the built-in ``modbus``,
``opcua`` and ``mqtt`` plugins do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # the contract's types, imported only for type checkers (as pytest does)
    from engine.keys import KeyStore
    from engine.model import Device, PlannedPoint, ReadGroupPlan
    from engine.plans.body import PlanBody
    from engine.principals import PrincipalResolver
    from engine.protocols import Session, Simulator, ValueAt
    from engine.transport import Transport

PROJECT = "converge"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- protocols: validate ---------------------------------------------------------------


@hookspec
def converge_protocol_names() -> list[str]:
    """Name the protocols this plugin implements.

    Called when the plugin manager is built, and again whenever the engine
    needs the list (validating a site, exporting JSON Schema), so it must be
    cheap and give the same answer each time. Returns the names a site
    inventory uses in a device's ``protocol:`` key (for example
    ``["modbus"]``). Results of all plugins are concatenated; a name claimed
    by two plugins is a :class:`~engine.errors.PluginError`.
    """


@hookspec(firstresult=True)
def converge_endpoint_schema(protocol: str) -> dict[str, Any] | None:
    """Give the cerberus schema of a device's ``endpoint`` mapping for ``protocol``.

    Called by the validate stage the first time a site uses ``protocol``
    (the result is kept for the life of the plugin manager) and by the JSON
    Schema export. Return a cerberus schema (a dict of field rules) when
    ``protocol`` is yours and ``None`` otherwise; the first non-``None``
    result is used. Unknown keys are always errors; defaults in the schema
    are applied (``default`` rule). The check-with rules of
    :class:`engine.compile.validate.rules.ConvergeValidator` (``duration``, ``glob``, ...)
    may be used.
    """


@hookspec(firstresult=True)
def converge_address_schema(protocol: str) -> dict[str, Any] | None:
    """Give the cerberus schema of a point's ``address`` mapping for ``protocol``.

    Same contract as :func:`converge_endpoint_schema`, for each point's
    ``address``. Cross-field rules that cerberus cannot express (for example
    "a string needs a length") belong in :func:`converge_check_address`.
    """


@hookspec(firstresult=True)
def converge_check_address(protocol: str, address: dict[str, Any]) -> list[str] | None:
    """Check one schema-valid ``address`` beyond what its schema says.

    Called after schema validation succeeded for a point. Return a list of
    problems in plain words (empty when the address is fine) when
    ``protocol`` is yours, ``None`` otherwise; the first non-``None`` result
    is used. Each problem becomes an ``address-invalid`` error at the address.
    """


# --- protocols: plan --------------------------------------------------------------------


@hookspec(firstresult=True)
def converge_plan_read_groups(
    device: Device, points: Sequence[PlannedPoint]
) -> ReadGroupPlan | None:
    """Group the governed points of ``device`` into the requests that read them.

    Called by the plan stage once per device that has governed points with a
    capture demand, with those points (never none) in inventory order and
    their merged schedules. Also called by the validate stage once per valid
    device with *every* point of the device, unscheduled (``every_ms`` is
    ``None``, ``cron`` empty): the problems found then are site errors,
    whether or not a policy governs the points, so report every problem that
    the addresses alone cause whatever the schedules. Return
    ``None`` when ``device.protocol`` is not yours. Otherwise return a
    :class:`~engine.model.ReadGroupPlan`: JSON-ready group dicts, each with a
    ``points`` list naming the points it reads, in a deterministic order; and
    the problems that make the device unplannable (overlapping addresses, a
    request larger than the device's limits allow, ...). Groups must respect
    every limit in ``device.limits`` that applies to the protocol; the engine
    checks ``max_requests_per_second`` from the groups' schedules itself.
    """


# --- protocols: collect (run time) ------------------------------------------------------


@hookspec(firstresult=True)
def converge_open_session(plan: PlanBody) -> Session | None:
    """Make the :class:`~engine.protocols.Session` that collects one device's plan.

    Called by the collector once per plan it runs, before anything is
    connected; ``plan`` is the verified, typed plan
    (:class:`~engine.plans.body.PlanBody`: ``plan.device`` holds protocol,
    endpoint and limits, ``plan.points`` each point's address,
    ``plan.read_groups`` the requests, each with the plugin's own fields in
    ``group.spec``). Return ``None`` when ``plan.device.protocol`` is not
    yours. The session must not connect in this hook.
    """


# --- protocols: simulate ----------------------------------------------------------------


@hookspec(firstresult=True)
def converge_simulator(
    protocol: str, devices: Sequence[Device], value_at: ValueAt
) -> Simulator | None:
    """Make a :class:`~engine.protocols.Simulator` for a site's devices of ``protocol``.

    Called by ``converge simulate`` (and the demo and tests) once per
    protocol the site uses, with that protocol's devices in inventory order.
    The simulator serves every point of every device on the device's own
    endpoint (loopback), answering with ``value_at(device, point, t)``.
    Return ``None`` when ``protocol`` is not yours.
    """


# --- key stores -------------------------------------------------------------------------


@hookspec(firstresult=True)
def converge_key_store(config: Mapping[str, Any]) -> KeyStore | None:
    """Open the :class:`~engine.keys.KeyStore` that ``config`` describes.

    Called by ``converge keys`` and by every stage that signs or verifies,
    once per store it needs. ``config["kind"]`` names the kind of store
    (the built-in encrypted file store answers for ``"file"``, with
    ``config["path"]`` its folder); the other keys are the store's own. Return
    ``None`` when the kind is not yours. Opening must be cheap and must not
    ask for a passphrase or PIN: ask only when a private key is first needed
    (``signer``, ``generate``, ``rotate``), because listing keys and verifying
    signatures use public keys only. Key names are kebab-case ids, checked
    with :func:`~engine.keys.check_key_name`; :func:`~engine.keys.verifier_of`
    and :class:`~engine.keys.KeyEvents` give the validity rules and the key
    events every store must follow.
    """


# --- principal resolvers ----------------------------------------------------------------


@hookspec(firstresult=True)
def converge_principal_resolver(config: Mapping[str, Any]) -> PrincipalResolver | None:
    """Open the :class:`~engine.principals.PrincipalResolver` that ``config`` describes.

    Called by every command that decides who may do what (``converge query``,
    ``converge serve``, ``converge access check``, ``--as`` on commands that
    act), once per run. ``config["kind"]`` names the kind of source (the
    built-in resolver answers for ``"file"``, with ``config["path"]`` a
    principals file as docs/policy-language.md describes it); the other keys
    are the resolver's own. Return ``None`` when the kind is not yours; raise
    :class:`~engine.errors.ConvergeError` (a :class:`~engine.errors.FindingsError`
    with places, for a file) when the source cannot be used. The resolver's
    ``digest`` is recorded with every decision made with it, so it must
    change whenever any answer would (an LDAP resolver might hash the entries
    it read). Results of several plugins: the first non-``None`` is used.
    """


# --- transports (scale-out) -------------------------------------------------------------


@hookspec(firstresult=True)
def converge_transport(url: str, options: Mapping[str, Any]) -> Transport | None:
    """Give the :class:`~engine.transport.Transport` for the broker at ``url``.

    Called by ``converge run --publish URL`` (a site collector sending its
    sealed batches and checkpoints to the centre) and by ``converge ingest
    --broker URL`` (the centre taking them), once per run, before anything
    is connected. Return ``None`` when the URL's scheme is not yours (the
    built-in transport answers for ``mqtt://`` and ``mqtts://``).
    ``options`` holds ``ca`` (a CA file for TLS, or ``None``), ``username``
    and ``password`` (or ``None``) and ``max_message`` (the largest message
    in bytes the receiver accepts; refuse larger ones at the broker when it
    can). The transport must deliver at least once, keep a ``durable``
    link's session while it is away, share a subscription with a ``group``
    among its members and carry each message's reply topic and correlation
    data; :mod:`engine.transport` states the whole contract. Results of
    several plugins: the first non-``None`` is used.
    """
