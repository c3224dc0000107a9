"""The operators' dashboard at ``/``: server-rendered pages behind a login, one module per page.

``site.py`` puts the pages on their routes and guards them (session, CSRF, security headers);
``auth.py`` holds users and sessions; ``render.py`` the templates (Jinja2, every value escaped);
``login.py``, ``fleet.py``, ``pole.py``, ``tag.py``, ``charts.py`` are the pages, ``admin.py`` the admins' forms,
``media.py`` the thumbnails; ``mapview.py`` and ``svg.py`` draw SVG on the server.
"""
