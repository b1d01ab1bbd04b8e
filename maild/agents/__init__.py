"""Agents working from their mail client: signed reply addresses, commands, identity,
notifications and replies relayed to the customer.

Pure: tokens (signing), commands (parsing), identity (who may act), changes (what
commands do to a ticket), recognise (is this an agent's mail about a ticket). With the
caller's connection: store (reads, recording an agent's mail), outgoing (compose and
queue), mailer (templates and context), reply (an agent's verified mail), notify
(notifications). desk is what the orchestrator calls.
"""
