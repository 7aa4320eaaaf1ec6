package com.example.bookshop.report;

import com.example.bookshop.orders.Invoice;
import com.example.bookshop.orders.OrderService;
import com.example.bookshop.util.Money;

public final class SalesReport {
  private SalesReport() {}
  public static Report of(OrderService service) { Report report = new Report("Sales"); Money total = Money.zero(); for (Invoice invoice : service.invoices()) { report.add(new ReportLine(invoice.orderId(), invoice.quote().total())); total = total.plus(invoice.quote().total()); } report.add(new ReportLine("TOTAL", total)); return report; }
}
