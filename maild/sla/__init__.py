"""Service levels: business calendars, policies with due times, and the escalation sweep."""
