package com.example.bookshop.app;

import com.example.bookshop.catalog.Catalog;
import com.example.bookshop.model.Category;
import com.example.bookshop.model.Customer;
import com.example.bookshop.model.Isbn;
import com.example.bookshop.orders.Cart;
import com.example.bookshop.orders.Checkout;
import com.example.bookshop.orders.Invoice;
import com.example.bookshop.orders.OrderService;
import com.example.bookshop.orders.Payment;
import com.example.bookshop.pricing.BulkDiscount;
import com.example.bookshop.pricing.MemberDiscount;
import com.example.bookshop.pricing.Pricer;
import com.example.bookshop.pricing.TaxTable;
import com.example.bookshop.report.Formatter;
import com.example.bookshop.report.SalesReport;
import com.example.bookshop.util.Money;
import com.example.bookshop.util.Percent;
import com.example.bookshop.util.Result;

public final class Main {
  private Main() {}
  public static void main(String[] args) {
    Catalog catalog = Seed.catalog();
    Pricer pricer = new Pricer(new TaxTable().set(Category.FICTION, new Percent(7)).set(Category.SCIENCE, new Percent(7))).with(new MemberDiscount(new Percent(10))).with(new BulkDiscount(5, new Percent(5)));
    OrderService service = new OrderService(catalog, new Checkout(pricer));
    Cart first = new Cart(new Customer("Ada", true), catalog).add(new Isbn("9780000000011"), 1).add(new Isbn("9780000000028"), 4);
    Cart second = new Cart(new Customer("Brian", false), catalog).add(new Isbn("9780000000035"), 2);
    service.place(first, new Payment(Money.ofCents(20000), "card"));
    Result<Invoice> short_ = service.place(second, new Payment(Money.ofCents(100), "cash"));
    System.out.print(Formatter.table(SalesReport.of(service)));
    System.out.println("declined: " + short_.error());
  }
}
