package com.example.bookshop.pricing;

import com.example.bookshop.model.Order;
import com.example.bookshop.util.Money;

public interface PriceRule {
  Money apply(Order order, Money current);
  String name();
}
