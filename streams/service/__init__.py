"""The imperative shell around the core, one job per module.

* ``follower``: reads every partition of ``modelvc.events`` (no consumer
  group: every instance keeps the whole read model) into the projection;
* ``writer``: the single writer of an events partition, in the Faust agent
  that owns the commands partition of the same number: decide against the
  folded state, append, wait until the fold has applied it, answer;
* ``replies``: what the HTTP API calls (``submit``: send the command, await
  its answer) and how answers reach it, here or through the replies topic;
* ``letters``: the one dead-letter sender of the instance;
* ``producer``: the instance's one Kafka producer.

``streams.bootstrap`` builds them from the settings and injects them.
"""
