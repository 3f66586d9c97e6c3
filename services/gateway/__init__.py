"""The gateway: the stream's door for every role but admin, the recorder and itself.

A process publishes an event by sending it to ``aarin.<session>.<domain>.<event>.<identity>``
(core NATS request/reply); nats-server lets each identity use only subjects ending in
its own name, so the last token is the verified publisher. The gateway

- refuses a message over ``schemas.base.MAX_EVENT_BYTES``, or over the publisher's
  publish budget (bytes per minute, per identity, by role: ``bus.roles.PUBLISH_BUDGETS``),
  answering with the reason; refusals are recorded as ``gateway.refused`` events
  (counted per publisher and reason, never the bytes);
- forwards everything else into the ``AAR`` stream on ``aar.<session>.<domain>.<event>``
  with the ``Aar-Publisher`` header naming the identity and ``Nats-Msg-Id`` scoped by
  it (``bus.client.msg_id``), then answers with the stream sequence. What does not
  decode, or claims another identity (``source``, ``agent_id``, ``trainer_id``), is
  forwarded too, so that the recorder stores its bytes as rejected, and the
  publisher is told why; every consumer checks the same rule (``bus.client.decode_msg``).

It keeps nothing but the budgets' running counts (a restart starts them afresh).
"""
