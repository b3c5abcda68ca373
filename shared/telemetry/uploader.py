"""The uploader (first cut): forwards aggregates and alerts to the cloud transport, on IoT Core
topics under the vehicle's prefix: ``<prefix>/aggregates`` and ``<prefix>/alerts``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import messages
from .component import MessageComponent, Services

CLOUD_SUFFIX = {messages.AGGREGATES: "aggregates", messages.ALERT: "alerts"}


def cloud_topic(prefix: str, message: Mapping[str, Any]) -> str:
    return f"{prefix}/{CLOUD_SUFFIX[message['kind']]}"


class UploaderComponent(MessageComponent):
    accepts = (messages.AGGREGATES, messages.ALERT)

    def __init__(self, services: Services) -> None:
        super().__init__(services)
        self.prefix = services.config.cloud_prefix

    def on_message(self, message: Mapping[str, Any]) -> None:
        payload = messages.dumps(message)
        self.services.cloud.publish(cloud_topic(self.prefix, message), payload)
        self.stats["cloud_messages"] += 1
        self.stats["cloud_bytes"] += len(payload)
