"""Small list helpers shared by the rules."""

def unique(items: list[typing.Any]) -> list[typing.Any]:
    """Returns `items` without repeats, in first-seen order.

    Args:
      items: hashable values (artifacts, strings).

    Returns:
      A new list.
    """
    seen = {}
    out = []
    for item in items:
        if item not in seen:
            seen[item] = True
            out.append(item)
    return out
