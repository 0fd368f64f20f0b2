"""One module per page family: catalog (list, model, compare), try, votes, auth, dashboard."""
