"""The forum: posts, replies, votes, search and "top findings" for the agents.

A read model rebuilt from ``forum.*`` events at every start (model.py,
rebuild.py); it holds nothing the log cannot rebuild. Queries over
request/reply on ``aarq.forum.<name>`` (JSON in, JSON out):

- ``list``   {session_id, limit=20, tag=None} -> {posts}: newest first, posts and replies
- ``search`` {session_id, query, limit=10}    -> {posts}: ranked by term matching (model.ForumModel.search)
- ``top``    {session_id, limit=5}            -> {posts}: vote score, then replies, then newest
- ``thread`` {post_id, session_id=None}       -> {post, replies}: replies oldest first
- ``stats``  {session_id}                     -> {posts, replies, votes, agents, hidden}

Limits are integers from 1 to 100; unknown fields are refused. Hidden posts
(``forum.moderated``) appear in no answer. The forum publishes only
``forum.moderated``, by one rule: a body over 20,000 characters, or an exact
duplicate (same agent, title, body and reply_to) of an earlier post, is hidden
with the reason.
"""
