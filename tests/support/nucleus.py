"""The Greengrass nucleus's IPC server, for component configuration, behind awscrt's connection.

Everything of the AWS IoT Device SDK runs as on a core: ``GreengrassCoreIPCClientV2`` (its
executor, stream handlers and futures), ``GreengrassCoreIPCClient``, ``awsiot.eventstreamrpc``
(the CONNECT handshake with the component's SVCUID, the operations, the JSON (de)serialisation of
the model's shapes) and ``awsiot.greengrasscoreipc.connect()`` itself. What is replaced is the
narrowest boundary there is: ``awscrt.eventstream.rpc.ClientConnection``, the native connection
to the nucleus's domain socket. This fake connection hands each message to ``Nucleus``, which
answers as the nucleus does, on one "event-loop" thread of its own (as awscrt's callbacks run on
its event-loop thread):

* ``aws.greengrass#GetConfiguration``: the value at ``keyPath`` of the component's configuration
  (the requester's own unless ``componentName`` names another), or ``ResourceNotFoundError``;
* ``aws.greengrass#SubscribeToConfigurationUpdate``: a response, then a
  ``ConfigurationUpdateEvents`` for every key that a later ``update`` changes under ``keyPath``,
  one event per changed key, as the nucleus sends them;
* ``aws.greengrass#SubscribeToValidateConfigurationUpdates`` and
  ``aws.greengrass#SendConfigurationValidityReport``: ``deploy`` sends the proposed configuration
  to the validators, and applies it only if none rejects it;
* ``aws.greengrass#PublishToTopic``, ``aws.greengrass#PublishToIoTCore``: recorded if the component's ``accessControl`` grants the
  exact topic (``UnauthorizedError`` otherwise, as the nucleus refuses it);
* anything else: ``ServiceError``.

Only the messages and fields the SDK itself writes and reads are spoken; nothing here imitates a
model class: the payloads are the JSON the SDK's own shapes serialise to and from.
"""

from __future__ import annotations

import base64
import copy
import json
import queue
import threading
from concurrent.futures import Future
from typing import Any
from unittest import mock

from awscrt.eventstream import Header
from awscrt.eventstream.rpc import ClientConnection, MessageFlag, MessageType

SERVICE_MODEL_TYPE = "service-model-type"
CONTENT_TYPE = ":content-type"


def _done() -> Future:
    future: Future = Future()
    future.set_running_or_notify_cancel()
    future.set_result(None)
    return future


def changed_paths(old: Any, new: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The leaf key paths whose values differ between two configuration trees."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += changed_paths(old.get(key), new.get(key), path + (key,))
        return out
    return [] if old == new else [path]


def merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    """A deployment's ``configurationUpdate.merge``: objects merged key by key, the rest replaced."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def _apply(config: dict[str, Any], update: dict[str, Any]) -> None:
    """A ``configurationUpdate``: its ``reset`` JSON pointers removed, then its ``merge`` merged."""
    for pointer in update.get("reset", []):
        *parents, last = pointer.strip("/").split("/")
        node = config
        for key in parents:
            node = node.get(key, {})
        node.pop(last, None)
    merge(config, json.loads(update.get("merge", "{}")))


class Continuation:
    """One stream (awscrt's ``ClientContinuation``)."""

    def __init__(self, nucleus: Nucleus, connection: Connection, handler: Any) -> None:
        self.nucleus, self.connection, self.handler = nucleus, connection, handler
        self.closed = False

    def activate(self, *, operation: str, headers: Any = None, payload: bytes | None = None,
                 message_type: MessageType, flags: int | None = None, on_flush: Any = None) -> Future:
        self.nucleus.loop.put(lambda: self.nucleus.request(self, operation, json.loads(payload or b"{}")))
        return _done()

    def send_message(self, *, headers: Any = None, payload: bytes | None = None, message_type: MessageType,
                     flags: int | None = None, on_flush: Any = None) -> Future:
        if flags and flags & MessageFlag.TERMINATE_STREAM:
            self.nucleus.loop.put(self.close)
        return _done()

    def reply(self, model: str, body: dict[str, Any], *, error: bool = False, terminate: bool = False) -> None:
        if self.closed:
            return
        headers = [Header.from_string(SERVICE_MODEL_TYPE, model), Header.from_string(CONTENT_TYPE, "application/json")]
        flags = MessageFlag.TERMINATE_STREAM if terminate else MessageFlag.NONE
        self.handler.on_continuation_message(
            headers=headers, payload=json.dumps(body).encode(), flags=flags,
            message_type=MessageType.APPLICATION_ERROR if error else MessageType.APPLICATION_MESSAGE)
        if terminate:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.nucleus.subscriptions = [s for s in self.nucleus.subscriptions if s[0] is not self]
            self.nucleus.validators = [v for v in self.nucleus.validators if v[0] is not self]
            self.handler.on_continuation_closed()


class Connection:
    """The component's connection (awscrt's ``ClientConnection``)."""

    def __init__(self, nucleus: Nucleus, handler: Any) -> None:
        self.nucleus, self.handler = nucleus, handler
        self.component: str | None = None
        self.open = True

    def send_protocol_message(self, *, headers: Any = None, payload: bytes | None = None,
                              message_type: MessageType, flags: int | None = None, on_flush: Any = None) -> Future:
        if message_type == MessageType.CONNECT:
            token = json.loads(payload or b"{}").get("authToken")
            self.component = self.nucleus.tokens.get(token)
            accepted = MessageFlag.CONNECTION_ACCEPTED if self.component else MessageFlag.NONE
            self.nucleus.loop.put(lambda: self.handler.on_protocol_message(
                headers=[], payload=b"", message_type=MessageType.CONNECT_ACK, flags=accepted))
        return _done()

    def new_stream(self, handler: Any) -> Continuation:
        return Continuation(self.nucleus, self, handler)

    def close(self) -> Future:
        if self.open:
            self.open = False
            self.nucleus.loop.put(lambda: self.handler.on_connection_shutdown(reason=None))
        return _done()

    def is_open(self) -> bool:
        return self.open


class Nucleus:
    """Component configurations by name, and the IPC answers about them (see the module)."""

    def __init__(self) -> None:
        self.configurations: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, str] = {}  # SVCUID -> component
        self.subscriptions: list[tuple[Continuation, str, list[str]]] = []
        self.requests: list[tuple[str, str, dict[str, Any]]] = []  # (component, operation, request payload)
        self.published: list[tuple[str, str, bytes]] = []  # (component, topic, payload) sent to AWS IoT Core
        self.local: list[tuple[str, str, dict[str, Any]]] = []  # (component, topic, publishMessage) on local pub/sub
        self.validators: list[tuple[Continuation, str]] = []  # SubscribeToValidateConfigurationUpdates
        self.reports: list[tuple[str, dict[str, Any]]] = []  # (component, configurationValidityReport)
        self._validating: dict[str, threading.Event] = {}
        self.loop: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="nucleus-event-loop", daemon=True)
        self._patch = mock.patch.object(ClientConnection, "connect", self.connect)

    def component(self, name: str, configuration: dict[str, Any], token: str) -> dict[str, str]:
        """Register a component; the environment the nucleus gives its process."""
        self.configurations[name] = copy.deepcopy(configuration)
        self.tokens[token] = name
        return {"SVCUID": token, "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT": "/greengrass/v2/ipc.socket"}

    def __enter__(self) -> Nucleus:
        self._thread.start()
        self._patch.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._patch.stop()
        self.loop.put(None)
        self._thread.join(5)

    def _run(self) -> None:
        while True:
            task = self.loop.get()
            try:
                if task is None:
                    return
                task()
            finally:
                self.loop.task_done()

    def drain(self) -> None:
        """Wait until every message sent so far has been answered."""
        self.loop.join()

    def connect(self, *, handler: Any, host_name: str, port: int, bootstrap: Any = None, socket_options: Any = None,
                tls_connection_options: Any = None) -> Future:
        connection = Connection(self, handler)
        self.loop.put(lambda: handler.on_connection_setup(connection=connection, error=None))
        return _done()

    def request(self, stream: Continuation, operation: str, body: dict[str, Any]) -> None:
        me = stream.connection.component or ""
        self.requests.append((me, operation, body))
        if operation == "aws.greengrass#GetConfiguration":
            name = body.get("componentName") or me
            value: Any = self.configurations.get(name)
            for key in body.get("keyPath") or []:
                value = value.get(key) if isinstance(value, dict) else None
            if value is None:
                stream.reply("aws.greengrass#ResourceNotFoundError",
                             {"message": f"Key not found: {body.get('keyPath')}", "resourceType": "Configuration",
                              "resourceName": name}, error=True, terminate=True)
            else:
                stream.reply("aws.greengrass#GetConfigurationResponse",
                             {"componentName": name, "value": copy.deepcopy(value)}, terminate=True)
        elif operation == "aws.greengrass#SubscribeToConfigurationUpdate":
            self.subscriptions.append((stream, body.get("componentName") or me, list(body.get("keyPath") or [])))
            stream.reply("aws.greengrass#SubscribeToConfigurationUpdateResponse", {})
        elif operation == "aws.greengrass#SubscribeToValidateConfigurationUpdates":
            self.validators.append((stream, me))
            stream.reply("aws.greengrass#SubscribeToValidateConfigurationUpdatesResponse", {})
        elif operation == "aws.greengrass#SendConfigurationValidityReport":
            report = body.get("configurationValidityReport") or {}
            self.reports.append((me, report))
            stream.reply("aws.greengrass#SendConfigurationValidityReportResponse", {}, terminate=True)
            waiting = self._validating.get(str(report.get("deploymentId")))
            if waiting is not None:
                waiting.set()
        elif operation == "aws.greengrass#PublishToTopic":
            topic = body.get("topic", "")
            if not self.authorised(me, "aws.greengrass.ipc.pubsub", "aws.greengrass#PublishToTopic", topic, stream):
                return
            message = body.get("publishMessage") or {}
            self.local.append((me, topic, message))
            stream.reply("aws.greengrass#PublishToTopicResponse", {}, terminate=True)
        elif operation == "aws.greengrass#PublishToIoTCore":
            topic = body.get("topicName", "")
            if not self.authorised(me, "aws.greengrass.ipc.mqttproxy", "aws.greengrass#PublishToIoTCore", topic, stream):
                return
            self.published.append((me, topic, base64.b64decode(body.get("payload", ""))))
            stream.reply("aws.greengrass#PublishToIoTCoreResponse", {}, terminate=True)
        else:
            stream.reply("aws.greengrass#ServiceError", {"message": f"{operation} is not served here"},
                         error=True, terminate=True)

    def authorised(self, me: str, service: str, operation: str, resource: str, stream: Continuation) -> bool:
        """The nucleus's authorisation: the component's ``accessControl`` grants the exact resource."""
        acl = (self.configurations.get(me, {}).get("accessControl") or {}).get(service) or {}
        if any(operation in p.get("operations", []) and resource in p.get("resources", []) for p in acl.values()):
            return True
        stream.reply("aws.greengrass#UnauthorizedError", {"message": f"Principal {me} is not authorized to perform "
                     f"{service}:{operation} on resource {resource}"}, error=True, terminate=True)
        return False

    def deploy(self, component: str, update: dict[str, Any], deployment_id: str, timeout: float = 10.0) -> str:
        """A deployment as the nucleus runs it for one component: the proposed configuration is
        sent to the component's validators first (``ValidateConfigurationUpdateEvents``); a
        REJECTED report fails the deployment and nothing is applied; else (accepted, no
        validator, or no report within ``timeout``: the nucleus proceeds) the update is applied.
        Returns SUCCEEDED or FAILED: <the component's message>."""
        validators = [v for v in self.validators if v[1] == component and not v[0].closed]
        if validators:
            proposed = copy.deepcopy(self.configurations[component])
            _apply(proposed, update)
            done = self._validating[deployment_id] = threading.Event()
            event = {"validateConfigurationUpdateEvent": {"configuration": proposed, "deploymentId": deployment_id}}

            def send() -> None:
                for stream, _ in validators:
                    stream.reply("aws.greengrass#ValidateConfigurationUpdateEvents", event)
            self.loop.put(send)
            done.wait(timeout)
            report = next((r for who, r in self.reports if who == component and r.get("deploymentId") == deployment_id),
                          {})
            if report.get("status") == "REJECTED":
                return f"FAILED: {report.get('message', '')}"
        self.update(component, update)
        return "SUCCEEDED"

    def update(self, component: str, update: dict[str, Any]) -> None:
        """A deployment's ``configurationUpdate`` for ``component`` (its ``reset`` JSON pointers
        first, then its ``merge`` JSON text), then an event per changed key."""
        def apply() -> None:
            config = self.configurations[component]
            old = copy.deepcopy(config)
            _apply(config, update)
            for path in changed_paths(old, config):
                for stream, name, prefix in list(self.subscriptions):
                    if name == component and list(path[:len(prefix)]) == prefix:
                        stream.reply("aws.greengrass#ConfigurationUpdateEvents", {
                            "configurationUpdateEvent": {"componentName": component, "keyPath": list(path)}})
        self.loop.put(apply)
