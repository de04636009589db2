"""`noisealign ui`: a local web app where a person is Demon's reward, choosing candidates step by step.

    from noisealign.ui import HumanSession, UIServer
    session = HumanSession.start(problem, DemonConfig(K=8, grid_points=16), seed=0)
    server = UIServer(session).start()
    print(server.url)   # open it in a browser; server.stop() when done

Without a browser, drive the session itself: session.candidates (K decoded look-aheads),
session.choose([indices]), session.undo(), session.finish(). Use one or the other at a time:
the server serializes the page's actions, not calls made beside it.
"""

from .server import UIServer
from .session import HumanSession, RunSpec

__all__ = ["HumanSession", "RunSpec", "UIServer"]
